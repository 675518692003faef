from typing import Any

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete, post_save


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents"

    def ready(self) -> None:
        from agents import registry, runs  # noqa: F401  (runs registers the run task)
        from agents.models import EntitlementOverride, PlanEntitlement, TenantEntitlement
        from billing.models import PlanLimit
        from tenants.models import Tenant

        def tenant_row_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
            tenant_id = instance.tenant_id
            registry.invalidate(tenant_id)
            transaction.on_commit(lambda: registry.invalidate(tenant_id))

        def plan_row_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
            plan = instance.plan
            registry.invalidate_plan(plan)
            transaction.on_commit(lambda: registry.invalidate_plan(plan))

        def tenant_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
            registry.invalidate(instance.id)

        for signal in (post_save, post_delete):
            signal.connect(tenant_row_changed, sender=TenantEntitlement, weak=False)
            # An operator's override widens (or, removed, narrows) one tenant's ceiling.
            signal.connect(tenant_row_changed, sender=EntitlementOverride, weak=False)
            signal.connect(plan_row_changed, sender=PlanEntitlement, weak=False)
            # The resolved registry carries the plan's limits too (billing.limiter.limits_for).
            signal.connect(plan_row_changed, sender=PlanLimit, weak=False)
        post_save.connect(tenant_changed, sender=Tenant, weak=False)
