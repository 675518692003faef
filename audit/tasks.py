"""Periodic signed checkpoints of every tenant's chain (Celery beat)."""

from __future__ import annotations

from celery import shared_task

from audit.export import create_checkpoint
from tenants.celery import SystemTask, TenantTask
from tenants.models import Tenant


@shared_task(name="audit.checkpoint_tenant", base=TenantTask, audit_event=False)
def checkpoint_tenant(*, tenant_id: str) -> int | None:
    checkpoint = create_checkpoint()
    return checkpoint.seq if checkpoint else None


@shared_task(name="audit.checkpoint_all_tenants", base=SystemTask)
def checkpoint_all_tenants() -> int:
    """Fan out: one tenant-scoped task per tenant (this task itself sees no tenant data)."""
    count = 0
    for tenant_id in Tenant.objects.values_list("id", flat=True):
        checkpoint_tenant.delay(tenant_id=str(tenant_id))
        count += 1
    return count
