"""A scratch database for the benchmarks that need many rows: `bench_playbook`, provisioned
like the test database (tests/conftest.py): same owner and runtime roles, same grants,
every migration run as the owner. `default` is the runtime role (RLS applies), `owner` the
owner; `admin()` is a psycopg connection as DATABASE_ADMIN_URL (bulk loading only).
The database is dropped on exit and both aliases point back to their own database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connections, models

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


def model_defaults(
    conn: psycopg.Connection, model: type[models.Model], named: str
) -> tuple[str, list[Any]]:
    """The NOT NULL columns without a database default that an INSERT naming the columns in
    `named` leaves out (added by a later migration with a Python-side default), as
    (", col1, col2", [default1, default2]) to append to the INSERT's column list and values."""
    table = model._meta.db_table
    required = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s AND is_nullable = 'NO' AND column_default IS NULL "
        "AND is_identity = 'NO' AND is_generated = 'NEVER'",
        [table],
    ).fetchall()
    listed = {name.strip() for name in named.split(",")}
    fields = {field.column: field for field in model._meta.concrete_fields}
    columns, values = "", []
    for (column,) in required:
        if column in listed:
            continue
        field = fields.get(column)
        if field is None or not field.has_default():
            raise RuntimeError(f"{table}.{column} is required: bench/scratch.py must fill it")
        columns += f", {column}"
        values.append(field.get_default())
    return columns, values


def create_tenants(conn: psycopg.Connection, count: int) -> list[tuple[str, int]]:
    """`count` tenants with one user each (as the admin: loading only). Returns
    [(tenant_id, user_id)] in creation order."""
    from tenants.models import Tenant

    named = "id, slug, name, plan, region, status, review_policy, created_at, updated_at"
    extra, values = model_defaults(conn, Tenant, named)
    conn.execute(
        f"INSERT INTO tenants_tenant ({named}{extra}) SELECT gen_random_uuid(), "  # noqa: S608
        "'bench-' || i, 'Bench ' || i, 'pro', 'eu-west-1', 'active', 'review_all', now(), "
        f"now(){', %s' * len(values)} FROM generate_series(1, %s) AS i",
        [*values, count],
    )
    add_user_per_tenant(conn, "bench-user-")
    rows = conn.execute(
        "SELECT t.id::text, u.id FROM tenants_tenant t JOIN accounts_user u "
        "ON u.tenant_id = t.id WHERE t.slug LIKE 'bench-%%' "
        "ORDER BY split_part(t.slug, '-', 2)::int"
    ).fetchall()
    conn.commit()
    return [(tenant, user) for tenant, user in rows]


def add_user_per_tenant(conn: psycopg.Connection, username_prefix: str) -> None:
    """One more user in every bench tenant, named `<username_prefix><tenant slug>`, with an
    unusable password and no OIDC identity."""
    from accounts.models import User

    named = (
        "password, is_superuser, username, first_name, last_name, email, is_staff, "
        "is_active, date_joined, tenant_id, oidc_issuer, oidc_subject"
    )
    extra, values = model_defaults(conn, User, named)
    conn.execute(
        f"INSERT INTO accounts_user ({named}{extra}) SELECT '!', false, "  # noqa: S608
        "%s || t.slug, '', '', '', false, true, now(), t.id, '', ''"
        f"{', %s' * len(values)} FROM tenants_tenant t WHERE t.slug LIKE 'bench-%%'",
        [username_prefix, *values],
    )
