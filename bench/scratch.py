"""A scratch database for the benchmarks that need many rows: `bench_playbook`, provisioned
like the test database (tests/conftest.py): same owner and runtime roles, same grants,
every migration run as the owner. `default` is the runtime role (RLS applies), `owner` the
owner; `admin()` is a psycopg connection as DATABASE_ADMIN_URL (bulk loading only).
The database is dropped on exit and both aliases point back to their own database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from tenants.provisioning import RoleSpec, provision

NAME = "bench_playbook"


def admin_dsn(database: str = NAME) -> str:
    return psycopg.conninfo.make_conninfo(settings.DATABASE_ADMIN_URL, dbname=database)


def admin() -> psycopg.Connection:
    return psycopg.connect(admin_dsn())


@contextmanager
def scratch_database() -> Iterator[str]:
    if not settings.DATABASE_ADMIN_URL:
        raise RuntimeError("The benchmarks need DATABASE_ADMIN_URL: run them with `make bench`.")
    runtime, owner = connections["default"].settings_dict, connections["owner"].settings_dict
    names = {alias: connections[alias].settings_dict["NAME"] for alias in ("default", "owner")}
    for alias in names:
        connections[alias].close()
        connections[alias].settings_dict["NAME"] = NAME
    try:
        provision(
            settings.DATABASE_ADMIN_URL,
            database=NAME,
            owner=RoleSpec(owner["USER"], owner["PASSWORD"]),
            runtime=RoleSpec(runtime["USER"], runtime["PASSWORD"]),
            recreate=True,
        )
        call_command("migrate", database="owner", verbosity=0, interactive=False)
        connections["owner"].close()
        yield NAME
    finally:
        for alias, name in names.items():
            connections[alias].close()
            connections[alias].settings_dict["NAME"] = name
        with psycopg.connect(settings.DATABASE_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')


def create_tenants(conn: psycopg.Connection, count: int) -> list[tuple[str, int]]:
    """`count` tenants with one user each (as the admin: loading only). Returns
    [(tenant_id, user_id)] in creation order."""
    conn.execute(
        "INSERT INTO tenants_tenant (id, slug, name, plan, region, status, review_policy, "
        "created_at, updated_at) SELECT gen_random_uuid(), 'bench-' || i, 'Bench ' || i, "
        "'pro', 'eu-west-1', 'active', 'review_all', now(), now() "
        "FROM generate_series(1, %s) AS i",
        [count],
    )
    conn.execute(
        "INSERT INTO accounts_user (password, is_superuser, username, first_name, last_name, "
        "email, is_staff, is_active, date_joined, tenant_id, oidc_issuer, oidc_subject) "
        "SELECT '!', false, 'bench-user-' || t.slug, '', '', '', false, true, now(), t.id, "
        "'', '' FROM tenants_tenant t WHERE t.slug LIKE 'bench-%%'"
    )
    rows = conn.execute(
        "SELECT t.id::text, u.id FROM tenants_tenant t JOIN accounts_user u "
        "ON u.tenant_id = t.id WHERE t.slug LIKE 'bench-%%' "
        "ORDER BY split_part(t.slug, '-', 2)::int"
    ).fetchall()
    conn.commit()
    return [(tenant, user) for tenant, user in rows]
