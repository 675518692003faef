from django.db import migrations

import tenants.migration_ops


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0001_initial"),
        ("tenants", "0002_support_session_function"),
    ]

    operations = [
        tenants.migration_ops.LegacySupportAccess("conversation"),
        tenants.migration_ops.LegacySupportAccess("message"),
    ]
