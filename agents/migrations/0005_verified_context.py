"""Move this app's tables to the one verified-context policy (tenants migration 0006); its
platform tables are written only in a verified platform context."""

from django.db import migrations

import tenants.migration_ops


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0004_run_confidence"),
        ("tenants", "0006_verified_context"),
    ]

    operations = [
        tenants.migration_ops.EnableTenantRLS("tenantentitlement"),
        tenants.migration_ops.EnableTenantRLS("document"),
        tenants.migration_ops.EnableTenantRLS("chunk"),
        tenants.migration_ops.EnableTenantRLS("agentrun"),
        tenants.migration_ops.EnableTenantRLS("checkpointrecord"),
        tenants.migration_ops.EnableTenantRLS("checkpointwrite"),
        tenants.migration_ops.EnablePlatformRLS("planentitlement"),
    ]
