"""Celery base classes: every task is tenant-scoped unless it says otherwise.

`TenantTask` (the app's default task class) requires `tenant_id=` in the task's keyword
arguments, refuses to be enqueued without it, and runs the task body inside a transaction
in `tenant_context(tenant_id)`. A task that really has no tenant (a platform sweep that fans
out per-tenant tasks) declares `base=SystemTask`, visibly.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from tenants.context import TenantScopeError, coerce_tenant_id, tenant_context


class TenantTask(Task):
    abstract = True
    tenant_scoped = True
    # Each run writes a `task.<name>` audit event in the same transaction as its work, so a
    # task that fails (and rolls back) leaves none. A task may opt out only when it is
    # itself a record of the log (the audit checkpoint) or a periodic tick that records
    # its own event when it does something (the Stripe meter sender).
    audit_event = True

    def _tenant_id_from(self, kwargs: dict[str, Any] | None) -> str:
        raw = (kwargs or {}).get("tenant_id")
        if not raw:
            raise TenantScopeError(
                f"Task {self.name} is tenant-scoped and was called without tenant_id=. "
                "Pass tenant_id=<uuid> as a keyword argument (or declare base=SystemTask "
                "if the task really has no tenant)."
            )
        return str(coerce_tenant_id(raw))

    def apply_async(  # type: ignore[override]
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        kwargs = dict(kwargs or {})
        kwargs["tenant_id"] = self._tenant_id_from(kwargs)
        return super().apply_async(args=args, kwargs=kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tenant_id = self._tenant_id_from(kwargs)
        with tenant_context(tenant_id):
            result = self.run(*args, **kwargs)
            if self.audit_event:
                from audit.actions import record_audit_event

                record_audit_event(
                    f"task.{self.name}"[:64],
                    actor_type="system",
                    resource_type="task",
                    resource_id=getattr(self.request, "id", "") or "",
                    context={"task": self.name},
                )
            return result


class SystemTask(Task):
    """A task with no tenant: it sees zero rows of any tenant table."""

    abstract = True
    tenant_scoped = False


def fan_out(task: TenantTask) -> int:
    """Enqueue `task` once for every tenant (for a SystemTask sweep, which sees no tenant
    rows and so cannot tell which tenants have work); returns how many were enqueued."""
    from tenants.models import Tenant

    count = 0
    for tenant_id in Tenant.objects.values_list("id", flat=True):
        task.delay(tenant_id=str(tenant_id))
        count += 1
    return count
