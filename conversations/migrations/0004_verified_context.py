"""Move this app's tables to the one verified-context policy (tenants migration 0006)."""

from django.db import migrations

import tenants.migration_ops


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0003_review_and_corrections"),
        ("tenants", "0006_verified_context"),
    ]

    operations = [
        tenants.migration_ops.EnableTenantRLS("conversation"),
        tenants.migration_ops.EnableTenantRLS("message"),
        tenants.migration_ops.EnableTenantRLS("correction"),
    ]
