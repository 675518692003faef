"""Rebuild the limiter's spend ledger in Redis from PostgreSQL (after a Redis flush or loss).

manage.py rebuild_ledger                     # every tenant
manage.py rebuild_ledger --tenant northwind  # one tenant
"""

from __future__ import annotations

from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.limiter import period_of, rebuild_ledger
from tenants.context import tenant_context
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Replace this month's spend in Redis with PostgreSQL's sum of usage costs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="The tenant's slug (default: every tenant).")

    def handle(self, *args: Any, **options: Any) -> None:
        tenants = list(Tenant.objects.order_by("slug"))
        if options["tenant"]:
            tenants = [t for t in tenants if t.slug == options["tenant"]]
            if not tenants:
                raise CommandError(f"No tenant with slug {options['tenant']!r}.")
        period = period_of()
        for tenant in tenants:
            try:
                with tenant_context(tenant):
                    spend = rebuild_ledger(str(tenant.id))
            except redis.RedisError as exc:
                raise CommandError(f"Redis is unavailable: {type(exc).__name__}") from None
            self.stdout.write(
                f"{tenant.slug}: {period} spend {spend} micro-dollars (${spend / 1_000_000:,.4f})"
            )
