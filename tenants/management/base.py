"""Base class for management commands that work inside one tenant: `--tenant SLUG`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.context import tenant_context
from tenants.models import Tenant


class TenantCommand(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")

    def execute(self, *args: Any, **options: Any) -> Any:
        slug = options.get("tenant")
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {slug!r}.")
        self.tenant = tenant
        with tenant_context(tenant):
            return super().execute(*args, **options)
