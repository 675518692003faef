"""Stripe metering on Celery beat: every minute, one tenant task per tenant sends that
tenant's due meter events (billing.stripe_sync)."""

from __future__ import annotations

import logging

from celery import shared_task

from audit.actions import record_audit_event
from billing.stripe_sync import log_disabled_once, metering_enabled, send_due_meter_events
from tenants.celery import SystemTask, TenantTask, fan_out

logger = logging.getLogger(__name__)


@shared_task(name="billing.send_meter_events", base=TenantTask, audit_event=False)
def send_meter_events_for_tenant(*, tenant_id: str) -> dict[str, object]:
    # Runs every minute: it is audited when it did something, not on every tick.
    result = send_due_meter_events().as_dict()
    if result.get("sent") or result.get("failed"):
        record_audit_event(
            "billing.meter_events_sent",
            actor_type="system",
            resource_type="billing",
            context={k: v for k, v in result.items() if isinstance(v, int | str)},
        )
    return result


@shared_task(name="billing.send_all_meter_events", base=SystemTask)
def send_all_meter_events() -> int:
    """Fan out: one tenant task per tenant. This task sees no tenant rows (it cannot tell which
    tenants have due meter events), so every tenant gets one; each finds its own due rows.
    Suspended and closed tenants too: their usage is still billed."""
    if not metering_enabled():
        log_disabled_once()
        return 0
    return fan_out(send_meter_events_for_tenant)
