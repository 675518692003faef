"""Create a partner API key and print it (once: only its hash is stored).

manage.py create_api_key --tenant northwind --scope write --name "CRM sync" --days 90
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from accounts.api_keys import issue_api_key
from accounts.models import ApiKey
from tenants.management.base import TenantCommand


class Command(TenantCommand):
    help = "Create a partner API key for a tenant and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--scope", choices=ApiKey.Scope.values, default=ApiKey.Scope.READ)
        parser.add_argument("--name", default="Created from the command line")
        parser.add_argument("--days", type=int, default=None, help="Expire after N days.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1.")
        issued = issue_api_key(
            acting_user=None,
            name=options["name"],
            scope=options["scope"],
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
        self.stderr.write(
            f"API key {issued.api_key.prefix} ({issued.api_key.scope}) for {self.tenant.slug}; "
            "store it now, it is not shown again:"
        )
        self.stdout.write(issued.plaintext)
