"""Re-wrap every tenant's data keys under the current key-encryption key.

    # local backend: add version 2 to VAULT_LOCAL_KEYS, deploy, then
    manage.py rotate_kek
    # afterwards version 1 can be removed from the configuration.

Credentials are not re-encrypted (their data keys do not change), so this is quick and
needs no downtime: until a tenant's keys are re-wrapped, the old KEK version still decrypts.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tenants.context import tenant_context
from tenants.models import Tenant
from tenants.vault.backends import kek_backend
from tenants.vault.service import rewrap_data_keys


class Command(BaseCommand):
    help = "Re-wrap every tenant's data keys under the current KEK version."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant (slug).")
        parser.add_argument(
            "--to-backend",
            choices=["local", "aws_kms", "vault_transit"],
            help="Move data keys to another KMS backend (default: VAULT_BACKEND).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        backend = kek_backend(options["to_backend"])
        tenants = Tenant.objects.all()
        if options["tenant"]:
            tenants = tenants.filter(slug=options["tenant"])
        total = 0
        for tenant in tenants.order_by("slug"):
            # One transaction per tenant: a failure leaves the others done and this one as it was.
            with tenant_context(tenant):
                count = rewrap_data_keys(options["to_backend"])
            total += count
            if count:
                self.stdout.write(f"  {tenant.slug}: {count} data key(s) re-wrapped")
        self.stdout.write(
            self.style.SUCCESS(
                f"All data keys are wrapped by {backend.name} version {backend.current_version()} "
                f"({total} re-wrapped)."
            )
        )
