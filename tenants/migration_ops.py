"""Reviewed migration operations for the tenant boundary (DESIGN.md invariants 2 and 6).

Every tenant table's migration uses `EnableTenantRLS`; every foreign key between two tenant
tables also gets `SameTenantForeignKey`. The system checks in `tenants/checks.py` fail when
either is missing, so a forgotten operation cannot ship silently.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

POLICY_NAME = "tenant_isolation"
# The one function every policy calls (tenants migration 0006): it returns the tenant of the
# verified context -- signed by the app, bound by the database to this backend and this
# transaction -- and NULL for a forged, expired, absent or foreign context.
CONTEXT_FUNCTION = "playbook_context_tenant"
TENANT_PREDICATE = f"tenant_id = {CONTEXT_FUNCTION}()"

# History only: the predicates of migrations written before the verified context. They
# trusted settings the runtime role could set itself; `EnableTenantRLS` replaces them.
LEGACY_TENANT_PREDICATE = (
    "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant', true), '')::uuid)"
)
LEGACY_SUPPORT_POLICY_NAME = "support_session_access"
LEGACY_SUPPORT_PREDICATE = "tenant_id = (SELECT playbook_support_tenant())"
LEGACY_POLICY_NAMES = (POLICY_NAME, LEGACY_SUPPORT_POLICY_NAME, "support_session_self")


def create_policy_sql(
    quote: Any, table: str, name: str, predicate: str, check: str | None = None
) -> str:
    return (
        f"CREATE POLICY {quote(name)} ON {quote(table)} AS PERMISSIVE FOR ALL TO PUBLIC "
        f"USING ({predicate}) WITH CHECK ({check or predicate})"
    )


def read_predicate(function: str) -> str:
    return f"tenant_id = {function}()"


def _table(state_apps: Any, app_label: str, model_name: str) -> str:
    return str(state_apps.get_model(app_label, model_name)._meta.db_table)


class TableOperation(migrations.operations.base.Operation):
    """What every operation here shares: it changes the database only (the model state is
    the migration's own), it is reversible, and it runs as plain SQL."""

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass


class EnableTenantRLS(TableOperation):
    """ENABLE + FORCE row-level security on a tenant table, with its one policy:

        tenant_isolation: USING/WITH CHECK (tenant_id = playbook_context_tenant())

    FORCE binds the table owner too. Without a verified context the function returns NULL:
    every row is invisible, every write rejected. `read_function` names another function
    for reads (the audit log: only readers the verified context admits); writes still need
    the context's tenant. Idempotent: it drops the table's earlier policies first, so the
    same operation moves a table from the legacy policies to this one.
    """

    def __init__(self, model_name: str, read_function: str = "") -> None:
        self.model_name = model_name
        self.read_function = read_function

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        raw_table = _table(to_state.apps, app_label, self.model_name)
        q = schema_editor.quote_name
        table = q(raw_table)
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        for name in LEGACY_POLICY_NAMES:
            schema_editor.execute(f"DROP POLICY IF EXISTS {q(name)} ON {table}")
        using = read_predicate(self.read_function) if self.read_function else TENANT_PREDICATE
        schema_editor.execute(create_policy_sql(q, raw_table, POLICY_NAME, using, TENANT_PREDICATE))

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = schema_editor.quote_name(_table(from_state.apps, app_label, self.model_name))
        schema_editor.execute(
            f"DROP POLICY IF EXISTS {schema_editor.quote_name(POLICY_NAME)} ON {table}"
        )

    def describe(self) -> str:
        return f"Enable and force tenant row-level security on {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"rls_{self.model_name.lower()}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_name": self.model_name}
        if self.read_function:
            kwargs["read_function"] = self.read_function
        return (self.__class__.__qualname__, [], kwargs)


PLATFORM_FUNCTION = "playbook_context_platform"
PLATFORM_POLICIES = {
    # name: (command, USING, WITH CHECK)
    "platform_read": ("SELECT", "true", None),
    "platform_insert": ("INSERT", None, f"{PLATFORM_FUNCTION}()"),
    "platform_update": ("UPDATE", f"{PLATFORM_FUNCTION}()", f"{PLATFORM_FUNCTION}()"),
    "platform_delete": ("DELETE", f"{PLATFORM_FUNCTION}()", None),
}
# A tenant may update its own row (branding, review policy); a trigger keeps the columns
# only the platform changes (plan, status, slug, region) out of its reach.
SELF_UPDATE = f"({PLATFORM_FUNCTION}() OR (id = {CONTEXT_FUNCTION}()))"
# Platform rows about one tenant (an operator's entitlement overrides): the platform reads
# them all, a tenant only its own.
TENANT_READ = f"({PLATFORM_FUNCTION}() OR (tenant_id = {CONTEXT_FUNCTION}()))"


def platform_policies(
    self_update: bool, tenant_read: bool = False
) -> dict[str, tuple[str, str | None, str | None]]:
    policies = dict(PLATFORM_POLICIES)
    if self_update:
        policies["platform_update"] = ("UPDATE", SELF_UPDATE, SELF_UPDATE)
    if tenant_read:
        policies["platform_read"] = ("SELECT", TENANT_READ, None)
    return policies


class EnablePlatformRLS(TableOperation):
    """Row-level security on a platform table (tenants, plans, prices, entitlements): every
    role reads it; only a verified platform context writes it. Not FORCEd: migrations (the
    owner role) ship and change its rows.

        platform_read   FOR SELECT USING (true
                                          | playbook_context_platform()
                                            OR tenant_id = playbook_context_tenant())
        platform_insert FOR INSERT WITH CHECK (playbook_context_platform())
        platform_update FOR UPDATE USING/WITH CHECK (playbook_context_platform()
                                                     [OR id = playbook_context_tenant()])
        platform_delete FOR DELETE USING (playbook_context_platform())

    `tenant_read`: rows about one tenant (its `tenant_id`) that the platform writes and that
    tenant alone reads besides the platform (an operator's entitlement overrides).
    """

    def __init__(
        self, model_name: str, tenant_self_update: bool = False, tenant_read: bool = False
    ) -> None:
        self.model_name = model_name
        self.tenant_self_update = tenant_self_update
        self.tenant_read = tenant_read

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        q = schema_editor.quote_name
        table = q(_table(to_state.apps, app_label, self.model_name))
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        policies = platform_policies(self.tenant_self_update, self.tenant_read)
        for name, (command, using, check) in policies.items():
            sql = f"CREATE POLICY {q(name)} ON {table} AS PERMISSIVE FOR {command} TO PUBLIC"
            if using:
                sql += f" USING ({using})"
            if check:
                sql += f" WITH CHECK ({check})"
            schema_editor.execute(sql)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        q = schema_editor.quote_name
        table = q(_table(from_state.apps, app_label, self.model_name))
        for name in PLATFORM_POLICIES:
            schema_editor.execute(f"DROP POLICY IF EXISTS {q(name)} ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self) -> str:
        return f"Platform row-level security on {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"platform_rls_{self.model_name.lower()}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_name": self.model_name}
        if self.tenant_self_update:
            kwargs["tenant_self_update"] = True
        if self.tenant_read:
            kwargs["tenant_read"] = True
        return (self.__class__.__qualname__, [], kwargs)


class LegacyTenantRLS(TableOperation):
    """History only (migrations before tenants 0006): RLS with the legacy setting-based
    policies. A later migration of every app replaces them with `EnableTenantRLS`."""

    def __init__(self, model_name: str, support_access: bool = True) -> None:
        self.model_name = model_name
        self.support_access = support_access

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        raw_table = _table(to_state.apps, app_label, self.model_name)
        q = schema_editor.quote_name
        schema_editor.execute(f"ALTER TABLE {q(raw_table)} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {q(raw_table)} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(create_policy_sql(q, raw_table, POLICY_NAME, LEGACY_TENANT_PREDICATE))
        if self.support_access:
            schema_editor.execute(
                create_policy_sql(
                    q, raw_table, LEGACY_SUPPORT_POLICY_NAME, LEGACY_SUPPORT_PREDICATE
                )
            )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = schema_editor.quote_name(_table(from_state.apps, app_label, self.model_name))
        for name in (POLICY_NAME, LEGACY_SUPPORT_POLICY_NAME):
            schema_editor.execute(
                f"DROP POLICY IF EXISTS {schema_editor.quote_name(name)} ON {table}"
            )
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self) -> str:
        return f"Legacy tenant row-level security on {self.model_name}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_name": self.model_name}
        if not self.support_access:
            kwargs["support_access"] = False
        return (self.__class__.__qualname__, [], kwargs)


class LegacySupportAccess(TableOperation):
    """History only: the legacy support-session policy (see LegacyTenantRLS)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = _table(to_state.apps, app_label, self.model_name)
        schema_editor.execute(
            create_policy_sql(
                schema_editor.quote_name,
                table,
                LEGACY_SUPPORT_POLICY_NAME,
                LEGACY_SUPPORT_PREDICATE,
            )
        )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = schema_editor.quote_name(_table(from_state.apps, app_label, self.model_name))
        schema_editor.execute(
            "DROP POLICY IF EXISTS "
            f"{schema_editor.quote_name(LEGACY_SUPPORT_POLICY_NAME)} ON {table}"
        )

    def describe(self) -> str:
        return f"Legacy support-session policy on {self.model_name}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [], {"model_name": self.model_name})


def same_tenant_constraint_name(table: str, column: str) -> str:
    return f"{table}_{column}_same_tenant_fk"[:63]


class SameTenantForeignKey(TableOperation):
    """A composite foreign key (tenant_id, <fk>_id) -> parent (tenant_id, id).

    PostgreSQL checks foreign keys without row-level security, so a plain FK would let a row
    of tenant A point at a row of tenant B if the app code were wrong. This one cannot.
    The parent's (tenant_id, id) unique constraint comes from TenantScopedModel.
    """

    def __init__(self, model_name: str, field_name: str) -> None:
        self.model_name = model_name
        self.field_name = field_name

    def _parts(self, apps: Any, app_label: str) -> tuple[str, str, str]:
        model = apps.get_model(app_label, self.model_name)
        field = model._meta.get_field(self.field_name)
        return model._meta.db_table, field.column, field.related_model._meta.db_table

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table, column, parent_table = self._parts(to_state.apps, app_label)
        q = schema_editor.quote_name
        name = q(same_tenant_constraint_name(table, column))
        # Checked immediately (not deferred): the offending INSERT/UPDATE itself fails.
        # Deletes cascade in Django's collector, children first, so NO ACTION is enough.
        schema_editor.execute(
            f"ALTER TABLE {q(table)} ADD CONSTRAINT {name} "
            f"FOREIGN KEY (tenant_id, {q(column)}) REFERENCES {q(parent_table)} (tenant_id, id) "
            "ON DELETE NO ACTION NOT DEFERRABLE"
        )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table, column, _ = self._parts(from_state.apps, app_label)
        q = schema_editor.quote_name
        schema_editor.execute(
            f"ALTER TABLE {q(table)} DROP CONSTRAINT IF EXISTS "
            f"{q(same_tenant_constraint_name(table, column))}"
        )

    def describe(self) -> str:
        return f"Same-tenant foreign key on {self.model_name}.{self.field_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"same_tenant_{self.model_name.lower()}_{self.field_name}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (
            self.__class__.__qualname__,
            [],
            {"model_name": self.model_name, "field_name": self.field_name},
        )
