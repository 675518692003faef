"""Periodic signed checkpoints of every tenant's chain (Celery beat)."""

from __future__ import annotations

from celery import shared_task

from audit.export import create_checkpoint
from tenants.celery import SystemTask, TenantTask, fan_out


@shared_task(name="audit.checkpoint_tenant", base=TenantTask, audit_event=False)
def checkpoint_tenant(*, tenant_id: str) -> int | None:
    checkpoint = create_checkpoint()
    return checkpoint.seq if checkpoint else None


@shared_task(name="audit.checkpoint_all_tenants", base=SystemTask)
def checkpoint_all_tenants() -> int:
    """Fan out: one tenant-scoped task per tenant (this task itself sees no tenant data)."""
    return fan_out(checkpoint_tenant)
