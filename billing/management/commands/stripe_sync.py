"""Create missing Stripe customers and send due meter events, now (the beat task does it every
minute).

manage.py stripe_sync                     # every tenant
manage.py stripe_sync --tenant northwind  # one tenant
"""

from __future__ import annotations

from typing import Any

import stripe
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.stripe_sync import (
    DISABLED_MESSAGE,
    SendResult,
    describe,
    due_meter_events,
    ensure_customer,
    metering_enabled,
    send_due_meter_events,
)
from tenants.context import tenant_context
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Create missing Stripe customers and send due meter events (one tenant or all)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="The tenant's slug (default: every tenant).")
        parser.add_argument("--limit", type=int, default=None, help="Meter events per batch.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenants = list(Tenant.objects.order_by("slug"))
        if options["tenant"]:
            tenants = [t for t in tenants if t.slug == options["tenant"]]
            if not tenants:
                raise CommandError(f"No tenant with slug {options['tenant']!r}.")
        if not metering_enabled():
            waiting = 0
            for tenant in tenants:
                with tenant_context(tenant):
                    waiting += due_meter_events()
            self.stdout.write(f"{DISABLED_MESSAGE} Nothing sent; {waiting} meter events waiting.")
            return
        errors = 0
        for tenant in tenants:
            line, ok = self.sync_tenant(tenant, options["limit"])
            self.stdout.write(f"{tenant.slug}: {line}")
            errors += not ok
        if errors:
            raise CommandError(f"{errors} tenant(s) had Stripe errors; they are retried later.")

    def sync_tenant(self, tenant: Tenant, limit: int | None) -> tuple[str, bool]:
        try:
            with tenant_context(tenant):
                customer_id, created = ensure_customer()
        except stripe.StripeError as exc:
            return f"no Stripe customer ({describe(exc)})", False
        total = SendResult(customer_created=created)
        while True:  # one transaction per batch
            with tenant_context(tenant):
                batch = send_due_meter_events(limit)
            total.sent += batch.sent
            total.duplicates += batch.duplicates
            total.failed += batch.failed
            total.waiting = batch.waiting
            total.error = batch.error or total.error
            if batch.error or not batch.waiting or not (batch.sent + batch.duplicates):
                break
        line = (
            f"customer {customer_id}{' (created)' if created else ''}, "
            f"{total.sent} meter events sent, {total.duplicates} already at Stripe, "
            f"{total.failed} failed, {total.waiting} waiting"
        )
        if total.error:
            line += f" (last error: {total.error})"
        return line, not total.error
