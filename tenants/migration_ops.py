"""Reviewed migration operations for the tenant boundary (DESIGN.md invariants 2 and 6).

Every tenant table's migration uses `EnableTenantRLS`; every foreign key between two tenant
tables also gets `SameTenantForeignKey`. The system checks in `tenants/checks.py` fail when
either is missing, so a forgotten operation cannot ship silently.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

POLICY_NAME = "tenant_isolation"
TENANT_PREDICATE = (
    "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant', true), '')::uuid)"
)
# Support staff: admitted only through a valid support session for this tenant. The
# function (tenants migration 0002) reads `app.support_session` and returns that session's
# tenant while it is neither ended nor expired, NULL otherwise.
SUPPORT_POLICY_NAME = "support_session_access"
SUPPORT_PREDICATE = "tenant_id = (SELECT playbook_support_tenant())"


def create_policy_sql(quote: Any, table: str, name: str, predicate: str) -> str:
    return (
        f"CREATE POLICY {quote(name)} ON {quote(table)} AS PERMISSIVE FOR ALL TO PUBLIC "
        f"USING ({predicate}) WITH CHECK ({predicate})"
    )


def _table(state_apps: Any, app_label: str, model_name: str) -> str:
    return str(state_apps.get_model(app_label, model_name)._meta.db_table)


class EnableTenantRLS(migrations.operations.base.Operation):
    """ENABLE + FORCE row-level security on a tenant table and create its policies:

        tenant_isolation: USING/WITH CHECK
            (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant', true), '')::uuid))
        support_session_access: USING/WITH CHECK
            (tenant_id = (SELECT playbook_support_tenant()))

    FORCE makes the policies bind the table owner too; the `(SELECT ...)` form is evaluated
    once per statement (an InitPlan), not once per row. Without a tenant setting (or a valid
    support session) the expression is NULL: every row is invisible, every write rejected.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str, support_access: bool = True) -> None:
        self.model_name = model_name
        self.support_access = support_access

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        raw_table = _table(to_state.apps, app_label, self.model_name)
        table = schema_editor.quote_name(raw_table)
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        q = schema_editor.quote_name
        schema_editor.execute(create_policy_sql(q, raw_table, POLICY_NAME, TENANT_PREDICATE))
        if self.support_access:
            schema_editor.execute(
                create_policy_sql(q, raw_table, SUPPORT_POLICY_NAME, SUPPORT_PREDICATE)
            )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = schema_editor.quote_name(_table(from_state.apps, app_label, self.model_name))
        for name in (POLICY_NAME, SUPPORT_POLICY_NAME):
            schema_editor.execute(
                f"DROP POLICY IF EXISTS {schema_editor.quote_name(name)} ON {table}"
            )
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self) -> str:
        return f"Enable and force tenant row-level security on {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"rls_{self.model_name.lower()}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_name": self.model_name}
        if not self.support_access:
            kwargs["support_access"] = False
        return (self.__class__.__qualname__, [], kwargs)


class EnableSupportAccess(migrations.operations.base.Operation):
    """Add the support-session policy to a tenant table created before it existed."""

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = _table(to_state.apps, app_label, self.model_name)
        schema_editor.execute(
            create_policy_sql(
                schema_editor.quote_name, table, SUPPORT_POLICY_NAME, SUPPORT_PREDICATE
            )
        )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = schema_editor.quote_name(_table(from_state.apps, app_label, self.model_name))
        schema_editor.execute(
            f"DROP POLICY IF EXISTS {schema_editor.quote_name(SUPPORT_POLICY_NAME)} ON {table}"
        )

    def describe(self) -> str:
        return f"Support-session policy on {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"support_{self.model_name.lower()}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [], {"model_name": self.model_name})


def same_tenant_constraint_name(table: str, column: str) -> str:
    return f"{table}_{column}_same_tenant_fk"[:63]


class SameTenantForeignKey(migrations.operations.base.Operation):
    """A composite foreign key (tenant_id, <fk>_id) -> parent (tenant_id, id).

    PostgreSQL checks foreign keys without row-level security, so a plain FK would let a row
    of tenant A point at a row of tenant B if the app code were wrong. This one cannot.
    The parent's (tenant_id, id) unique constraint comes from TenantScopedModel.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str, field_name: str) -> None:
        self.model_name = model_name
        self.field_name = field_name

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

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
