"""Test database: built like production, queried as the runtime role.

`django_db_setup` provisions a fresh `test_<name>` database with the same code as
`make dev` / `manage.py provision_database` (owner + runtime roles, grants, pgvector), runs
every migration as the owner role, and leaves the `default` alias connected as the runtime
role: NOSUPERUSER, NOBYPASSRLS, owner of nothing. No test shortcut skips row-level security.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from tenants.provisioning import RoleSpec, provision

APP_LABELS = (
    "tenants",
    "accounts",
    "conversations",
    "agents",
    "billing",
    "audit",
    "devidp",
    "oauth2_provider",
    "otp_totp",
    "otp_static",
)


def _conninfo(alias: str, **overrides: Any) -> str:
    cfg = connections[alias].settings_dict
    params = {
        "dbname": cfg["NAME"],
        "user": cfg["USER"],
        "password": cfg["PASSWORD"] or None,
        "host": cfg["HOST"] or cfg.get("OPTIONS", {}).get("host") or None,
        "port": cfg["PORT"] or None,
    }
    params.update(overrides)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v})


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: Any) -> Iterator[None]:
    if not settings.DATABASE_ADMIN_URL:
        pytest.exit(
            "Tests need DATABASE_ADMIN_URL (a role that may create databases); "
            "run them with `make test`, which starts the embedded PostgreSQL."
        )
    runtime, owner = connections["default"].settings_dict, connections["owner"].settings_dict
    test_name = f"test_{runtime['NAME']}"
    with django_db_blocker.unblock():
        for alias in ("default", "owner"):
            connections[alias].close()
            connections[alias].settings_dict["NAME"] = test_name
        provision(
            settings.DATABASE_ADMIN_URL,
            database=test_name,
            owner=RoleSpec(owner["USER"], owner["PASSWORD"]),
            runtime=RoleSpec(runtime["USER"], runtime["PASSWORD"]),
            recreate=True,
        )
        call_command("migrate", database="owner", verbosity=0, interactive=False)
        connections["owner"].close()
    yield
    with django_db_blocker.unblock():
        for alias in ("default", "owner"):
            connections[alias].close()
        with psycopg.connect(settings.DATABASE_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{test_name}" WITH (FORCE)')


def _app_tables() -> list[str]:
    tables = [
        model._meta.db_table
        for label in APP_LABELS
        if label in {config.label for config in apps.get_app_configs()}
        for model in apps.get_app_config(label).get_models()
    ]
    # Platform rows that migrations ship (plan defaults) are not test data: keep them.
    tables = [
        t
        for t in tables
        if t not in {"agents_planentitlement", "billing_modelprice", "billing_planlimit"}
    ]
    return [*tables, "audit_chain_heads", "django_session", "django_admin_log"]


@pytest.fixture
def owner_sql(django_db_setup: None) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """Run SQL as the owner role, autocommit, outside Django's test transactions."""
    conn = psycopg.connect(_conninfo("owner"), autocommit=True)

    def run(query: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    yield run
    conn.close()


@pytest.fixture
def live_db(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Database access with real commits (for threads, other processes and connection reuse).

    Cleans up with TRUNCATE as the administrator: the runtime role has no TRUNCATE
    privilege (under row-level security it could not see other tenants' rows anyway), and
    the audit log refuses TRUNCATE from everyone but a superuser.
    """
    with django_db_blocker.unblock():
        yield
        for alias in ("default", "owner"):
            connections[alias].close()
        admin = psycopg.conninfo.make_conninfo(
            settings.DATABASE_ADMIN_URL, dbname=connections["default"].settings_dict["NAME"]
        )
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in _app_tables()) + " CASCADE")


@pytest.fixture
def unique_queue() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def guard_counts_of_its_own(settings: Any) -> None:
    """Login lockouts and request counts live in Redis, which outlives a test and a run, and
    every test client comes from 127.0.0.1: each test counts under a key prefix of its own
    (settings.GUARDS_CACHE), so no test inherits another's failed logins or requests."""
    guards = settings.GUARDS_CACHE
    settings.CACHES = {
        **settings.CACHES,
        guards: {
            **settings.CACHES[guards],
            "KEY_PREFIX": f"playbook-guards-test-{uuid.uuid4().hex[:12]}",
        },
    }


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing() -> None:
    # PBKDF2's work factor is the point in production and pure waste in tests.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def live_server_url(live_db: None) -> Iterator[str]:
    """The real app on a loopback port, in a thread, against the test database (committed
    data). Requests from the app to itself (OIDC discovery, token, JWKS) work too."""
    from django.test.testcases import LiveServerThread, _StaticFilesHandler

    thread = LiveServerThread("127.0.0.1", _StaticFilesHandler, connections_override={}, port=0)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    try:
        yield f"http://127.0.0.1:{thread.port}"
    finally:
        thread.terminate()
