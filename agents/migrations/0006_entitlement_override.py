"""The plan is a ceiling: an operator's override is the only way past it.

`agents_entitlementoverride` holds platform staff's exceptions to one tenant's plan (a tool,
or a model by provider and model id), each with its reason. A platform table about one
tenant: written only in a verified platform context, read by the platform and by that tenant
alone. Tenants' own grants beyond their plan are not deleted here: they stay, inert, and
work again if the plan or an override comes to allow them (README "Agents, playbooks and
review")."""

import uuid

import django.db.models.deletion
from django.db import migrations, models

import tenants.migration_ops


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0005_verified_context"),
        ("tenants", "0006_verified_context"),
    ]

    operations = [
        migrations.CreateModel(
            name="EntitlementOverride",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        default=uuid.uuid4, editable=False, primary_key=True, serialize=False
                    ),
                ),
                (
                    "kind",
                    models.CharField(choices=[("tool", "Tool"), ("model", "Model")], max_length=20),
                ),
                ("name", models.CharField(max_length=100)),
                ("config", models.JSONField(blank=True, default=dict)),
                ("reason", models.TextField()),
                ("granted_by", models.CharField(max_length=150)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
            ],
            options={
                "ordering": ["tenant", "kind", "name"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("tenant", "kind", "name"), name="entitlement_override_key"
                    )
                ],
            },
        ),
        tenants.migration_ops.EnablePlatformRLS("entitlementoverride", tenant_read=True),
    ]
