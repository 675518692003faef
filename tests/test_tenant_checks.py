"""The system checks that refuse a database without the tenant boundary (invariants 1-3, 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import environ
import psycopg
import pytest
from django.conf import settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections, models
from django.db.backends.postgresql.base import DatabaseWrapper
from django.test.utils import isolate_apps

from conversations.models import Message
from tenants.checks import (
    check_tenant_model_shape,
    function_problems,
    other_database_problems,
    platform_table_problems,
    runtime_role_problems,
    secret_table_problems,
    table_problems,
    tenant_boundary_problems,
    unprotected_tenant_tables,
)
from tenants.migration_ops import EnableTenantRLS, same_tenant_constraint_name
from tenants.models import TenantScopedModel


def ids(problems: list[checks.CheckMessage]) -> set[str]:
    return {p.id for p in problems if p.id}


def wrapper_for(alias: str, **overrides: Any) -> DatabaseWrapper:
    """A separate connection with the alias's settings and some overridden (e.g. USER)."""
    settings_dict = {**connections[alias].settings_dict, **overrides}
    return DatabaseWrapper(settings_dict, alias=f"probe-{alias}")


@pytest.mark.django_db
def test_every_tenant_table_in_the_project_passes() -> None:
    assert tenant_boundary_problems("default") == []
    call_command("check", databases=["default"], fail_level="ERROR")


@pytest.fixture
def unprotected_model(live_db: None, owner_sql: Callable[..., Any]) -> Iterator[type[models.Model]]:
    """A tenant model whose migration forgot EnableTenantRLS, created as the owner."""
    with isolate_apps("conversations"):

        class Forgotten(TenantScopedModel):
            note = models.TextField()

            class Meta(TenantScopedModel.Meta):
                app_label = "conversations"
                db_table = "test_forgotten_rls"

        owner = connections["owner"]
        with owner.schema_editor() as editor:
            editor.create_model(Forgotten)
        owner_sql("GRANT SELECT, INSERT, UPDATE, DELETE ON test_forgotten_rls TO playbook_app")
        try:
            yield Forgotten
        finally:
            owner_sql("DROP TABLE IF EXISTS test_forgotten_rls")


def test_a_tenant_table_without_rls_fails_the_check(
    unprotected_model: type[models.Model], owner_sql: Callable[..., Any]
) -> None:
    problems = table_problems(connections["default"], [unprotected_model])
    assert {"tenants.E020", "tenants.E021"} <= ids(problems)
    assert "EnableTenantRLS('Forgotten')" in " ".join(str(p.hint) for p in problems)

    # RLS enabled but not forced: still an error (the owner would bypass it).
    owner_sql("ALTER TABLE test_forgotten_rls ENABLE ROW LEVEL SECURITY")
    assert "tenants.E020" in ids(table_problems(connections["default"], [unprotected_model]))

    # A policy with the right name but a different predicate is not the policy.
    owner_sql("CREATE POLICY tenant_isolation ON test_forgotten_rls USING (true) WITH CHECK (true)")
    owner_sql("ALTER TABLE test_forgotten_rls FORCE ROW LEVEL SECURITY")
    assert ids(table_problems(connections["default"], [unprotected_model])) == {
        "tenants.E021",  # not the verified-context policy
    }

    # The reviewed migration operation fixes it; an extra permissive policy breaks it again.
    owner_sql("DROP POLICY tenant_isolation ON test_forgotten_rls")
    owner = connections["owner"]
    with owner.schema_editor() as editor:
        op = EnableTenantRLS("Forgotten")

        class State:
            class apps:
                @staticmethod
                def get_model(app_label: str, name: str) -> type[models.Model]:
                    return unprotected_model

        owner_sql("ALTER TABLE test_forgotten_rls NO FORCE ROW LEVEL SECURITY")
        owner_sql("ALTER TABLE test_forgotten_rls DISABLE ROW LEVEL SECURITY")
        op.database_forwards("conversations", editor, State, State)
    assert table_problems(connections["default"], [unprotected_model]) == []

    owner_sql("CREATE POLICY open_door ON test_forgotten_rls USING (true)")
    assert ids(table_problems(connections["default"], [unprotected_model])) == {"tenants.E022"}
    # A restrictive policy is not the one policy either (and the legacy support policy
    # would widen access).
    owner_sql("DROP POLICY open_door ON test_forgotten_rls")
    owner_sql(
        "CREATE POLICY narrowing ON test_forgotten_rls AS RESTRICTIVE USING (tenant_id IS NOT NULL)"
    )
    assert ids(table_problems(connections["default"], [unprotected_model])) == {"tenants.E022"}


def test_a_runtime_role_that_can_bypass_rls_fails_the_check(
    live_db: None, owner_sql: Callable[..., Any]
) -> None:
    database = connections["default"].settings_dict["NAME"]
    with psycopg.connect(settings.DATABASE_ADMIN_URL, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS playbook_bypasser")
        admin.execute("CREATE ROLE playbook_bypasser LOGIN BYPASSRLS PASSWORD 'x'")
        admin.execute(f'GRANT CONNECT ON DATABASE "{database}" TO playbook_bypasser')
        bypasser = wrapper_for("default", USER="playbook_bypasser", PASSWORD="x")
        try:
            assert "tenants.E011" in ids(runtime_role_problems(bypasser))
        finally:
            bypasser.close()
            admin.execute(f'REVOKE CONNECT ON DATABASE "{database}" FROM playbook_bypasser')
            admin.execute("DROP ROLE playbook_bypasser")

    # A superuser (the administrator the test suite provisions with) ignores RLS altogether.
    admin = environ.Env.db_url_config(settings.DATABASE_ADMIN_URL)
    superuser = wrapper_for(
        "default",
        USER=admin["USER"],
        PASSWORD=admin["PASSWORD"],
        HOST=admin["HOST"],
        PORT=admin["PORT"],
        OPTIONS=admin.get("OPTIONS", {}),
    )
    try:
        assert "tenants.E010" in ids(runtime_role_problems(superuser))
    finally:
        superuser.close()

    # Running the app as the owner role: it owns every tenant table.
    as_owner = wrapper_for("owner")
    assert "tenants.E012" in ids(table_problems(as_owner))
    as_owner.close()


def test_tenant_model_shape_checks() -> None:
    with isolate_apps("conversations"):

        class GlobalUnique(TenantScopedModel):
            code = models.CharField(max_length=10, unique=True)

            class Meta(TenantScopedModel.Meta):
                app_label = "conversations"
                constraints = [
                    models.UniqueConstraint(fields=["code", "tenant"], name="code_first"),
                ]
                indexes = [models.Index(fields=["code"], name="code_only_idx")]

        from django.apps import apps as global_apps

        # The check walks the global registry; point it at this one model.
        original = global_apps.get_models
        global_apps.get_models = lambda *a, **k: [GlobalUnique]  # type: ignore[method-assign]
        try:
            found = ids(check_tenant_model_shape())
        finally:
            global_apps.get_models = original  # type: ignore[method-assign]
    assert found == {"tenants.E001", "tenants.E002", "tenants.E003", "tenants.E004"}


@pytest.mark.django_db
def test_check_command_fails_loudly_on_a_bad_role(monkeypatch: pytest.MonkeyPatch) -> None:
    from tenants import checks as tenant_checks

    monkeypatch.setattr(
        tenant_checks,
        "tenant_boundary_problems",
        lambda alias="default": [checks.Error("role can bypass RLS", id="tenants.E011")],
    )
    with pytest.raises(SystemCheckError, match=r"tenants\.E011"):
        call_command("check", databases=["default"])


@pytest.mark.django_db
def test_the_signing_machinery_granted_back_fails_the_check(
    owner_sql: Callable[..., Any],
) -> None:
    runtime = connections["default"].settings_dict["USER"]
    assert function_problems(connections["default"]) == []
    grants = [
        ("GRANT EXECUTE ON FUNCTION playbook_app_mac(text, text) TO {r}", "tenants.E052"),
        ("GRANT EXECUTE ON FUNCTION playbook_bind_context(text, text) TO {r}", "tenants.E052"),
        ("GRANT SELECT ON playbook_context_keys TO {r}", "tenants.E053"),
        ("GRANT EXECUTE ON FUNCTION playbook_enter(text) TO PUBLIC", "tenants.E051"),
        ("ALTER FUNCTION playbook_context_tenant() RESET search_path", "tenants.E050"),
    ]
    revokes = [
        "REVOKE EXECUTE ON FUNCTION playbook_app_mac(text, text) FROM {r}",
        "REVOKE EXECUTE ON FUNCTION playbook_bind_context(text, text) FROM {r}",
        "REVOKE SELECT ON playbook_context_keys FROM {r}",
        "REVOKE EXECUTE ON FUNCTION playbook_enter(text) FROM PUBLIC",
        "ALTER FUNCTION playbook_context_tenant() SET search_path = pg_catalog, pg_temp",
    ]
    try:
        for statement, code in grants:
            owner_sql(statement.format(r=runtime))
            assert code in ids(function_problems(connections["default"])), statement
    finally:
        for statement in revokes:
            owner_sql(statement.format(r=runtime))
    assert function_problems(connections["default"]) == []


@pytest.mark.django_db
def test_truncate_granted_back_fails_the_check(owner_sql: Callable[..., Any]) -> None:
    runtime = connections["default"].settings_dict["USER"]
    owner_sql(f"GRANT TRUNCATE ON conversations_message TO {runtime}")
    try:
        problems = table_problems(connections["default"], [Message])
        assert ids(problems) == {"tenants.E013"}
    finally:
        owner_sql(f"REVOKE TRUNCATE ON conversations_message FROM {runtime}")
    assert table_problems(connections["default"], [Message]) == []


@pytest.mark.django_db
def test_a_plain_foreign_key_between_tenant_tables_fails_the_check(
    owner_sql: Callable[..., Any],
) -> None:
    constraint = same_tenant_constraint_name("conversations_message", "conversation_id")
    owner_sql(f"ALTER TABLE conversations_message DROP CONSTRAINT {constraint}")
    try:
        problems = table_problems(connections["default"], [Message])
        assert ids(problems) == {"tenants.E030"}
        assert "SameTenantForeignKey('Message', 'conversation')" in str(problems[0].hint)
    finally:
        owner_sql(
            f"ALTER TABLE conversations_message ADD CONSTRAINT {constraint} FOREIGN KEY "
            "(tenant_id, conversation_id) REFERENCES conversations_conversation (tenant_id, id)"
        )
    assert table_problems(connections["default"], [Message]) == []


@pytest.mark.django_db
def test_temporary_search_path_and_sessions_granted_back_fail_the_check(
    owner_sql: Callable[..., Any],
) -> None:
    runtime = connections["default"].settings_dict["USER"]
    database = connections["default"].settings_dict["NAME"]
    assert runtime_role_problems(connections["default"]) == []
    with psycopg.connect(settings.DATABASE_ADMIN_URL, autocommit=True) as admin:
        cases = [
            (
                f'GRANT TEMPORARY ON DATABASE "{database}" TO {runtime}',
                f'REVOKE TEMPORARY ON DATABASE "{database}" FROM {runtime}',
                "tenants.E014",
            ),
            (
                f'ALTER ROLE {runtime} IN DATABASE "{database}" RESET search_path',
                f'ALTER ROLE {runtime} IN DATABASE "{database}" SET search_path = public, pg_temp',
                "tenants.E015",
            ),
            (
                f"GRANT SELECT ON django_session TO {runtime}",
                f"REVOKE ALL ON django_session FROM {runtime}",
                "tenants.E016",
            ),
        ]
        for grant, revoke, code in cases:
            # ALTER ROLE needs the administrator; the grants, the owner of the objects.
            run = admin.execute if grant.startswith("ALTER ROLE") else owner_sql
            run(grant)
            try:
                assert code in ids(runtime_role_problems(connections["default"])), grant
            finally:
                run(revoke)
    assert runtime_role_problems(connections["default"]) == []


@pytest.mark.django_db
def test_a_platform_table_open_to_writes_fails_the_check(owner_sql: Callable[..., Any]) -> None:
    assert platform_table_problems(connections["default"]) == []
    owner_sql("DROP POLICY platform_update ON billing_planlimit")
    owner_sql("CREATE POLICY platform_update ON billing_planlimit FOR UPDATE USING (true)")
    try:
        problems = platform_table_problems(connections["default"])
        assert ids(problems) == {"tenants.E060"}
        assert "billing_planlimit" in problems[0].msg
    finally:
        owner_sql("DROP POLICY platform_update ON billing_planlimit")
        owner_sql(
            "CREATE POLICY platform_update ON billing_planlimit FOR UPDATE "
            "USING (playbook_context_platform()) WITH CHECK (playbook_context_platform())"
        )
    assert platform_table_problems(connections["default"]) == []


@pytest.mark.django_db
def test_any_table_holding_tenant_id_without_rls_fails_the_check(
    owner_sql: Callable[..., Any],
) -> None:
    assert unprotected_tenant_tables(connections["default"]) == []
    owner_sql("ALTER TABLE accounts_user DISABLE ROW LEVEL SECURITY")
    owner_sql("CREATE TABLE test_unmodelled (id int, tenant_id uuid)")
    try:
        problems = unprotected_tenant_tables(connections["default"])
        assert ids(problems) == {"tenants.E024"}
        assert sorted(p.msg.split()[1] for p in problems) == ["accounts_user", "test_unmodelled"]
    finally:
        owner_sql("DROP TABLE test_unmodelled")
        owner_sql("ALTER TABLE accounts_user ENABLE ROW LEVEL SECURITY")
    assert unprotected_tenant_tables(connections["default"]) == []


@pytest.mark.django_db
def test_secret_tables_open_to_tenant_traffic_fail_the_check(
    owner_sql: Callable[..., Any],
) -> None:
    assert secret_table_problems(connections["default"]) == []
    owner_sql("ALTER TABLE otp_totp_totpdevice DISABLE ROW LEVEL SECURITY")
    owner_sql("CREATE POLICY peek ON oauth2_provider_accesstoken FOR SELECT USING (true)")
    owner_sql(
        "CREATE POLICY peek ON otp_static_statictoken FOR SELECT "
        "USING (playbook_context_platform() OR true)"
    )
    try:
        problems = secret_table_problems(connections["default"])
        assert ids(problems) == {"tenants.E017"}
        assert sorted(p.msg.split()[1] for p in problems) == [
            "oauth2_provider_accesstoken",
            "otp_static_statictoken",
            "otp_totp_totpdevice",
        ]
    finally:
        owner_sql("DROP POLICY peek ON otp_static_statictoken")
        owner_sql("DROP POLICY peek ON oauth2_provider_accesstoken")
        owner_sql("ALTER TABLE otp_totp_totpdevice ENABLE ROW LEVEL SECURITY")
    assert secret_table_problems(connections["default"]) == []


@pytest.mark.django_db
def test_the_runtime_role_connects_to_its_own_database_only(
    settings: Any,
) -> None:
    runtime = connections["default"].settings_dict
    # The administrator's databases are closed to it (provisioning revoked PUBLIC's CONNECT).
    for maintenance in ("postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(
                psycopg.conninfo.make_conninfo(
                    settings.DATABASE_ADMIN_URL,
                    dbname=maintenance,
                    user=runtime["USER"],
                    password=runtime["PASSWORD"],
                )
            ).close()
    # Production refuses a runtime role that may open another database. (Here the
    # development database of the same cluster is one, by design: see the check.)
    settings.PRODUCTION = True
    with psycopg.connect(settings.DATABASE_ADMIN_URL, autocommit=True) as admin:
        admin.execute('DROP DATABASE IF EXISTS "playbook_other"')
        admin.execute('CREATE DATABASE "playbook_other"')
        try:
            admin.execute(f'GRANT CONNECT ON DATABASE "playbook_other" TO "{runtime["USER"]}"')
            problems = other_database_problems(connections["default"])
            assert ids(problems) == {"tenants.E018"}
            assert "playbook_other" in problems[0].msg
            assert runtime["NAME"] not in problems[0].msg.rstrip(".").split(": ")[1].split(", ")
        finally:
            admin.execute('DROP DATABASE "playbook_other"')
    settings.PRODUCTION = False
    assert other_database_problems(connections["default"]) == []
