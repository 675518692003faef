"""System checks for the tenant boundary.

Static (every `manage.py` command): invariant 1, the shape of tenant models.
Database (`manage.py check --database default`, the test suite, and process start through
`assert_tenant_boundary`): invariants 2, 3 and 6 as they are in the live database, checked as
the runtime role the app really connects as.
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper

from tenants.migration_ops import (
    CONTEXT_FUNCTION,
    PLATFORM_FUNCTION,
    POLICY_NAME,
    TENANT_PREDICATE,
    platform_policies,
    read_predicate,
    same_tenant_constraint_name,
)
from tenants.models import CrossTenantForeignKey, Tenant, TenantScopedModel

logger = logging.getLogger(__name__)


def tenant_models() -> list[type[TenantScopedModel]]:
    return [
        model
        for model in apps.get_models()
        if issubclass(model, TenantScopedModel) and not model._meta.proxy
    ]


def has_tenant(model: Any) -> bool:
    try:
        field = model._meta.get_field("tenant")
    except Exception:
        return False
    return isinstance(field, models.ForeignKey) and field.related_model is Tenant


def same_tenant_foreign_keys(model: type[models.Model]) -> list[models.ForeignKey]:
    """Foreign keys from a tenant model to another model that has a tenant (invariant 6)."""
    return [
        field
        for field in model._meta.get_fields()
        if isinstance(field, models.ForeignKey)
        and field.concrete
        and field.name != "tenant"
        and not isinstance(field, CrossTenantForeignKey)
        and has_tenant(field.related_model)
    ]


# --------------------------------------------------------------------------- static


@checks.register("tenants")
def check_tenant_model_shape(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for model in tenant_models():
        label = model._meta.label
        has_key = any(
            isinstance(c, models.UniqueConstraint) and list(c.fields) == ["tenant", "id"]
            for c in model._meta.constraints
        )
        if not has_key:
            errors.append(
                checks.Error(
                    f"{label} lacks the unique (tenant, id) constraint of TenantScopedModel.",
                    hint="If the model sets Meta.constraints, include "
                    "*TenantScopedModel.Meta.constraints.",
                    obj=model,
                    id="tenants.E001",
                )
            )
        for constraint in model._meta.constraints:
            fields = list(getattr(constraint, "fields", []) or [])
            if fields and fields[0] != "tenant":
                errors.append(
                    checks.Error(
                        f"{label}: constraint {constraint.name} must start with 'tenant'.",
                        hint="Uniqueness in a tenant table always includes the tenant, first.",
                        obj=model,
                        id="tenants.E002",
                    )
                )
        for index in model._meta.indexes:
            # An approximate vector index (HNSW) cannot lead with tenant_id; RLS filters it.
            if type(index).__module__.startswith("pgvector."):
                continue
            if index.fields and index.fields[0].lstrip("-") != "tenant":
                errors.append(
                    checks.Error(
                        f"{label}: index {index.name} must start with 'tenant'.",
                        obj=model,
                        id="tenants.E003",
                    )
                )
        for together in model._meta.unique_together:
            if together[0] != "tenant":
                errors.append(
                    checks.Error(
                        f"{label}: unique_together {together} must start with 'tenant'.",
                        obj=model,
                        id="tenants.E002",
                    )
                )
        for field in model._meta.local_fields:
            if field.unique and not field.primary_key:
                errors.append(
                    checks.Error(
                        f"{label}.{field.name} is unique across all tenants.",
                        hint="Use a UniqueConstraint on (tenant, field) instead.",
                        obj=model,
                        id="tenants.E004",
                    )
                )
    return errors


# --------------------------------------------------------------------------- database


def expected_policy(model: type[models.Model]) -> tuple[str, str]:
    """(USING, WITH CHECK) of the model's one policy, as PostgreSQL deparses them."""
    read_function = getattr(model, "rls_read_function", "")
    using = read_predicate(read_function) if read_function else TENANT_PREDICATE
    return f"({using})", f"({TENANT_PREDICATE})"


def runtime_role_problems(connection: BaseDatabaseWrapper) -> list[checks.CheckMessage]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        rolname, is_super, bypass = cursor.fetchone()
    errors: list[checks.CheckMessage] = []
    if is_super:
        errors.append(
            checks.Error(
                f"The runtime database role {rolname!r} is a superuser; superusers ignore "
                "row-level security.",
                hint="Point DATABASE_URL at a NOSUPERUSER NOBYPASSRLS role that owns nothing.",
                id="tenants.E010",
            )
        )
    if bypass:
        errors.append(
            checks.Error(
                f"The runtime database role {rolname!r} has BYPASSRLS.",
                hint=f"ALTER ROLE {rolname} NOBYPASSRLS;",
                id="tenants.E011",
            )
        )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT has_database_privilege(current_user, current_database(), 'TEMPORARY'), "
            "coalesce((SELECT 'search_path=public, pg_temp' = ANY(s.setconfig) "
            "  FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
            "  WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
            "    AND d.datname = current_database()), false), "
            "coalesce((SELECT has_table_privilege(current_user, c.oid, "
            "  'SELECT, INSERT, UPDATE, DELETE') FROM pg_class c JOIN pg_namespace n "
            "  ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "  AND c.relname = 'django_session'), false)"
        )
        temporary, pinned, sessions = cursor.fetchone()
    if temporary:
        errors.append(
            checks.Error(
                f"The runtime role {rolname!r} may create temporary tables, which can shadow "
                "real tables in unqualified SQL.",
                hint=f"REVOKE TEMPORARY ON DATABASE <db> FROM {rolname}; and from PUBLIC.",
                id="tenants.E014",
            )
        )
    if not pinned:
        errors.append(
            checks.Error(
                f"The runtime role {rolname!r} has no pinned search_path.",
                hint=f"ALTER ROLE {rolname} IN DATABASE <db> SET search_path = public, pg_temp;",
                id="tenants.E015",
            )
        )
    if sessions:
        errors.append(
            checks.Error(
                f"The runtime role {rolname!r} may read or write django_session; sessions live "
                "in Redis and a session row would let SQL replay someone's login.",
                hint=f"REVOKE ALL ON django_session FROM {rolname};",
                id="tenants.E016",
            )
        )
    return errors


#: Tables of secrets that tenant traffic must never read: the staff's second factors
#: (django-otp) and, in development, the local provider's directory, clients and live tokens.
SECRET_TABLES = ("otp\\_%", "oauth2\\_provider\\_%", "devidp\\_%")
#: The only contexts that read them: verified platform staff, and the development provider.
SECRET_CONTEXTS = (PLATFORM_FUNCTION, "playbook_context_directory")


def secret_table_problems(connection: BaseDatabaseWrapper) -> list[checks.CheckMessage]:
    """Every secret table the runtime role may touch has row-level security, and each of its
    policies admits only a verified platform or directory context."""
    allowed = {f"{schema}{name}()" for name in SECRET_CONTEXTS for schema in ("", "public.")}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.relrowsecurity, array_remove(array_agg(p.qual), NULL), "
            "  array_remove(array_agg(p.with_check), NULL), count(p.policyname) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_policies p ON p.schemaname = n.nspname AND p.tablename = c.relname "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND c.relname LIKE ANY(%s) "
            "AND has_table_privilege(current_user, c.oid, 'SELECT, INSERT, UPDATE, DELETE') "
            "GROUP BY c.relname, c.relrowsecurity ORDER BY 1",
            [list(SECRET_TABLES)],
        )
        rows = cursor.fetchall()
    return [
        checks.Error(
            f"Table {table} holds secrets (second factors or identity-provider tokens) that "
            "the runtime role may read outside a verified platform or directory context.",
            hint="Enable row-level security with one policy calling "
            "playbook_context_platform() (accounts migration 0008) or "
            "playbook_context_directory() (devidp migration 0002).",
            id="tenants.E017",
        )
        for table, secured, quals, with_checks, policies in rows
        if not secured
        or not policies
        or len(quals) != policies
        or not set(quals) | set(with_checks) <= allowed
    ]


def other_database_problems(connection: BaseDatabaseWrapper) -> list[checks.CheckMessage]:
    """In production the runtime role connects to its own database only. (In development one
    embedded cluster serves the development and the test databases with the same role.)"""
    if not settings.PRODUCTION:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT datname FROM pg_database WHERE datallowconn "
            "AND datname <> current_database() "
            "AND has_database_privilege(current_user, oid, 'CONNECT') ORDER BY 1"
        )
        others = [row[0] for row in cursor.fetchall()]
    if not others:
        return []
    return [
        checks.Error(
            f"The runtime role may connect to other databases: {', '.join(others)}.",
            hint="REVOKE CONNECT ON DATABASE <name> FROM PUBLIC (and from the runtime role); "
            "`manage.py provision_database` does it for the administrator's databases.",
            id="tenants.E018",
        )
    ]


def table_problems(
    connection: BaseDatabaseWrapper, models_to_check: list[type[models.Model]] | None = None
) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    with connection.cursor() as cursor:
        for model in tenant_models() if models_to_check is None else models_to_check:
            table = model._meta.db_table
            cursor.execute(
                "SELECT c.relrowsecurity, c.relforcerowsecurity, "
                "pg_has_role(current_user, c.relowner, 'MEMBER'), "
                "has_table_privilege(current_user, c.oid, 'TRUNCATE') "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s AND n.nspname = current_schema() AND c.relkind = 'r'",
                [table],
            )
            row = cursor.fetchone()
            if row is None:
                continue  # not migrated yet; `migrate` will create it with its policy
            enabled, forced, owns, can_truncate = row
            if not (enabled and forced):
                errors.append(
                    checks.Error(
                        f"Table {table} ({model._meta.label}) does not have row-level security "
                        f"{'forced' if enabled else 'enabled'}.",
                        hint=f"Add tenants.migration_ops.EnableTenantRLS({model.__name__!r}) "
                        "to the migration that creates it.",
                        obj=model,
                        id="tenants.E020",
                    )
                )
            if owns:
                errors.append(
                    checks.Error(
                        f"The runtime role owns (or can become the owner of) table {table}; "
                        "owners can disable row-level security.",
                        hint="Create tables as the owner role (DATABASE_OWNER_URL) and never "
                        "grant the owner role to the runtime role.",
                        obj=model,
                        id="tenants.E012",
                    )
                )
            if can_truncate:
                errors.append(
                    checks.Error(
                        f"The runtime role may TRUNCATE {table}; TRUNCATE ignores row-level "
                        "security.",
                        hint=f"REVOKE TRUNCATE ON {table} FROM <runtime role>;",
                        obj=model,
                        id="tenants.E013",
                    )
                )
            cursor.execute(
                "SELECT policyname, permissive, roles::text[], cmd, qual, with_check "
                "FROM pg_policies WHERE schemaname = current_schema() AND tablename = %s",
                [table],
            )
            policies = {name: rest for name, *rest in cursor.fetchall()}
            using, check = expected_policy(model)
            if policies.get(POLICY_NAME) != ["PERMISSIVE", ["public"], "ALL", using, check]:
                errors.append(
                    checks.Error(
                        f"Table {table} lacks the policy {POLICY_NAME!r} (or it differs from "
                        f"USING {using} WITH CHECK {check}).",
                        hint=f"Use tenants.migration_ops.EnableTenantRLS({model.__name__!r}).",
                        obj=model,
                        id="tenants.E021",
                    )
                )
            for name in sorted(set(policies) - {POLICY_NAME}):
                errors.append(
                    checks.Error(
                        f"Table {table} has another policy {name!r}: a tenant table has exactly "
                        "one, the verified-context policy (permissive policies widen access; "
                        "more policies also make the planner misestimate).",
                        hint=f"Drop it; EnableTenantRLS({model.__name__!r}) installs the one.",
                        obj=model,
                        id="tenants.E022",
                    )
                )
            for field in same_tenant_foreign_keys(model):
                parent: Any = field.related_model
                cursor.execute(
                    "SELECT 1 FROM pg_constraint con "
                    "JOIN pg_class c ON c.oid = con.conrelid "
                    "JOIN pg_class p ON p.oid = con.confrelid "
                    "WHERE con.contype = 'f' AND c.relname = %s AND p.relname = %s "
                    "AND (SELECT array_agg(a.attname::text ORDER BY k.ord) "
                    "     FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) "
                    "     JOIN pg_attribute a ON a.attrelid = con.conrelid "
                    "      AND a.attnum = k.attnum) = ARRAY['tenant_id', %s]",
                    [table, parent._meta.db_table, field.column],
                )
                if cursor.fetchone() is None:
                    errors.append(
                        checks.Error(
                            f"{model._meta.label}.{field.name} can point into another tenant: "
                            f"no (tenant_id, {field.column}) foreign key (expected constraint "
                            f"{same_tenant_constraint_name(table, field.column)}).",
                            hint="Add tenants.migration_ops.SameTenantForeignKey("
                            f"{model.__name__!r}, {field.name!r}) to its migration.",
                            obj=model,
                            id="tenants.E030",
                        )
                    )
    return errors


# Owner-only: what signs and binds contexts. The runtime role may only call
# playbook_enter (which verifies) and the policy functions.
SIGNING_FUNCTIONS = ("playbook_app_mac(text,text)", "playbook_bind_context(text,text)")
CONTEXT_KEY_TABLE = "playbook_context_keys"


def function_problems(connection: BaseDatabaseWrapper) -> list[checks.CheckMessage]:
    """SECURITY DEFINER functions run as their owner: each must pin its search_path (or a
    temporary object could stand in for a real one) and must not be callable by PUBLIC; the
    signing machinery must be out of the runtime role's reach."""
    errors: list[checks.CheckMessage] = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.oid::regprocedure::text, "
            "  coalesce(EXISTS (SELECT 1 FROM unnest(p.proconfig) c "
            "                   WHERE starts_with(c, 'search_path=')), false), "
            "  p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a "
            "       WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.prosecdef AND n.nspname = current_schema() ORDER BY 1"
        )
        for signature, pinned, public in cursor.fetchall():
            if not pinned:
                errors.append(
                    checks.Error(
                        f"SECURITY DEFINER function {signature} has no fixed search_path.",
                        hint="Add `SET search_path = pg_catalog, pg_temp` and qualify names.",
                        id="tenants.E050",
                    )
                )
            if public:
                errors.append(
                    checks.Error(
                        f"PUBLIC may execute the SECURITY DEFINER function {signature}.",
                        hint=f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC;",
                        id="tenants.E051",
                    )
                )
        for signature in SIGNING_FUNCTIONS:
            cursor.execute(
                "SELECT to_regprocedure(%s) IS NOT NULL AND "
                "has_function_privilege(current_user, %s, 'EXECUTE')",
                [signature, signature],
            )
            if cursor.fetchone()[0]:
                errors.append(
                    checks.Error(
                        f"The runtime role may execute {signature}: it could sign or bind a "
                        "tenant context of its choosing.",
                        hint=f"REVOKE ALL ON FUNCTION {signature} FROM <runtime role>;",
                        id="tenants.E052",
                    )
                )
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND has_table_privilege(current_user, %s, "
            "'SELECT, INSERT, UPDATE, DELETE')",
            [CONTEXT_KEY_TABLE, CONTEXT_KEY_TABLE],
        )
        if cursor.fetchone()[0]:
            errors.append(
                checks.Error(
                    f"The runtime role may read or write {CONTEXT_KEY_TABLE}, the tenant-context "
                    "signing keys.",
                    hint=f"REVOKE ALL ON {CONTEXT_KEY_TABLE} FROM <runtime role>;",
                    id="tenants.E053",
                )
            )
    return errors


def platform_models() -> list[type[models.Model]]:
    return [model for model in apps.get_models() if getattr(model, "rls_platform", "")]


def platform_table_problems(connection: BaseDatabaseWrapper) -> list[checks.CheckMessage]:
    """Platform tables (tenants, plans, prices, entitlements): readable by all, written only in
    a verified platform context (tenants.migration_ops.EnablePlatformRLS)."""
    errors: list[checks.CheckMessage] = []
    with connection.cursor() as cursor:
        for model in platform_models():
            table = model._meta.db_table
            cursor.execute(
                "SELECT c.relrowsecurity FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = current_schema()",
                [table],
            )
            row = cursor.fetchone()
            if row is None:
                continue
            cursor.execute(
                "SELECT policyname, permissive, cmd, coalesce(qual, ''), "
                "coalesce(with_check, '') FROM pg_policies "
                "WHERE schemaname = current_schema() AND tablename = %s",
                [table],
            )
            found = {name: rest for name, *rest in cursor.fetchall()}
            mode = getattr(model, "rls_platform", "")
            expected = platform_policies(mode == "tenant_self_update", mode == "tenant_read")
            wrong = not row[0] or set(found) != set(expected)
            for name, (command, using, check) in expected.items():
                permissive, cmd, qual, with_check = found.get(name, ("", "", "", ""))
                if (permissive, cmd) != ("PERMISSIVE", command):
                    wrong = True
                for wanted, actual in ((using, qual), (check, with_check)):
                    if wanted and PLATFORM_FUNCTION not in wanted and wanted != "true":
                        continue
                    if wanted and PLATFORM_FUNCTION in wanted and PLATFORM_FUNCTION not in actual:
                        wrong = True
                    if wanted == "true" and actual != "true":
                        wrong = True
            if wrong:
                errors.append(
                    checks.Error(
                        f"Platform table {table} is not written only in a verified platform "
                        f"context (row-level security and the policies {sorted(expected)}).",
                        hint=f"Use tenants.migration_ops.EnablePlatformRLS({model.__name__!r}).",
                        obj=model,
                        id="tenants.E060",
                    )
                )
    return errors


def unprotected_tenant_tables(connection: BaseDatabaseWrapper) -> list[checks.CheckMessage]:
    """Every table that holds a `tenant_id` column -- modelled or not -- has row-level
    security enabled and at least one policy calling the verified context."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' "
            "  AND NOT a.attisdropped "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND (NOT c.relrowsecurity OR NOT EXISTS ("
            "  SELECT 1 FROM pg_policies p WHERE p.schemaname = n.nspname "
            "  AND p.tablename = c.relname AND (p.qual LIKE %s OR p.with_check LIKE %s))) "
            "ORDER BY 1",
            [f"%{CONTEXT_FUNCTION}()%"] * 2,
        )
        tables = [row[0] for row in cursor.fetchall()]
    return [
        checks.Error(
            f"Table {table} holds tenant_id but no row-level security bound to the verified "
            "tenant context.",
            hint="Use tenants.migration_ops.EnableTenantRLS in the migration that creates it.",
            id="tenants.E024",
        )
        for table in tables
    ]


def tenant_boundary_problems(alias: str = "default") -> list[checks.CheckMessage]:
    connection = connections[alias]
    return (
        runtime_role_problems(connection)
        + secret_table_problems(connection)
        + other_database_problems(connection)
        + table_problems(connection)
        + function_problems(connection)
        + platform_table_problems(connection)
        + unprotected_tenant_tables(connection)
    )


@checks.register(checks.Tags.database)
def check_tenant_boundary(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    # Only meaningful for the runtime connection; `migrate` runs its checks as the owner.
    if not databases or "default" not in databases:
        return []
    return tenant_boundary_problems("default")


def assert_tenant_boundary() -> None:
    """Refuse to start a web or worker process whose database role could leak tenants."""
    try:
        problems = [p for p in tenant_boundary_problems("default") if p.is_serious()]
    except DatabaseError as exc:
        # Unreachable database: start anyway, /readyz reports it; a bad role is caught then.
        logger.warning(
            "tenant boundary check skipped: database unavailable (%s)", type(exc).__name__
        )
        return
    finally:
        connections["default"].close()
    if problems:
        raise ImproperlyConfigured(
            "Refusing to start: the tenant boundary is not enforced by the database.\n"
            + "\n".join(f"  {p.id}: {p.msg}" for p in problems)
        )
