"""Move this app's tables to the one verified-context policy (tenants migration 0006); its
platform tables are written only in a verified platform context."""

from django.db import migrations

import tenants.migration_ops


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_pricing_limits_stripe"),
        ("tenants", "0006_verified_context"),
    ]

    operations = [
        tenants.migration_ops.EnableTenantRLS("usageevent"),
        tenants.migration_ops.EnableTenantRLS("stripecustomer"),
        tenants.migration_ops.EnableTenantRLS("meterevent"),
        tenants.migration_ops.EnablePlatformRLS("modelprice"),
        tenants.migration_ops.EnablePlatformRLS("planlimit"),
    ]
