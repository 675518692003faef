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


def _table(state_apps: Any, app_label: str, model_name: str) -> str:
    return str(state_apps.get_model(app_label, model_name)._meta.db_table)


class EnableTenantRLS(migrations.operations.base.Operation):
    """ENABLE + FORCE row-level security on a tenant table and create its one policy:

        USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant', true), '')::uuid))
        WITH CHECK (same)

    FORCE makes the policy bind the table owner too; the `(SELECT ...)` form is evaluated once
    per statement (an InitPlan), not once per row. Without a tenant setting the expression is
    NULL, so every row is invisible and every write is rejected.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = schema_editor.quote_name(_table(to_state.apps, app_label, self.model_name))
        policy = schema_editor.quote_name(POLICY_NAME)
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(
            f"CREATE POLICY {policy} ON {table} AS PERMISSIVE FOR ALL TO PUBLIC "
            f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})"
        )

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        table = schema_editor.quote_name(_table(from_state.apps, app_label, self.model_name))
        schema_editor.execute(
            f"DROP POLICY IF EXISTS {schema_editor.quote_name(POLICY_NAME)} ON {table}"
        )
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self) -> str:
        return f"Enable and force tenant row-level security on {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"rls_{self.model_name.lower()}"

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
