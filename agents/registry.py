"""The entitlement registry: which tools, models, prompts and data sources a tenant may use,
and its plan's limits.

Rows, not code: a plan's defaults (PlanEntitlement) narrowed or extended by the tenant's own
rows (TenantEntitlement: grant with config, or revoke). Resolved per request or run and
cached in Redis for REGISTRY_CACHE_SECONDS; any change to a row invalidates it at once.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache

from agents.models import EntitlementKind, PlanEntitlement, TenantEntitlement
from tenants.context import require_tenant_id
from tenants.models import Tenant

DEFAULT_SYSTEM_PROMPT = (
    "You are the assistant of a consultant. Answer her client's question from the "
    "consultant's playbook passages provided, cite them as [1], [2], and say so when the "
    "playbook does not cover the question. Be concise and practical."
)


@dataclass(frozen=True)
class Resolved:
    tenant_id: str
    plan: str
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The plan's rate limits and spend caps (billing.models.PlanLimit's fields; empty: none
    # set), cached here so that admitting a call costs no database query.
    limits: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def default_model(self) -> tuple[str, dict[str, Any]] | None:
        """The model marked `default` (else the first by name)."""
        if not self.models:
            return None
        for name, config in sorted(self.models.items()):
            if config.get("default"):
                return name, config
        name = sorted(self.models)[0]
        return name, self.models[name]

    @property
    def system_prompt(self) -> str:
        return str(self.prompts.get("system", {}).get("text") or DEFAULT_SYSTEM_PROMPT)

    @property
    def embedder(self) -> str:
        return str(
            self.data_sources.get("playbook", {}).get("embedder") or settings.PLAYBOOK_EMBEDDER
        )


_SECTIONS = {
    EntitlementKind.TOOL: "tools",
    EntitlementKind.MODEL: "models",
    EntitlementKind.PROMPT: "prompts",
    EntitlementKind.DATA_SOURCE: "data_sources",
}


LIMIT_FIELDS = (
    "requests_per_minute",
    "user_requests_per_minute",
    "tokens_per_minute",
    "soft_cap_microdollars",
    "hard_cap_microdollars",
)


def cache_key(tenant_id: uuid.UUID | str) -> str:
    # The {tenant} hash tag keeps a tenant's keys on one Redis Cluster slot.
    return f"registry:{{{tenant_id}}}"


def resolve_from_rows(tenant: Tenant) -> Resolved:
    sections: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in _SECTIONS.values()}
    for row in PlanEntitlement.objects.filter(plan=tenant.plan):
        sections[_SECTIONS[EntitlementKind(row.kind)]][row.name] = dict(row.config)
    for trow in TenantEntitlement.objects.all():
        section = sections[_SECTIONS[EntitlementKind(trow.kind)]]
        if trow.effect == TenantEntitlement.Effect.REVOKE:
            section.pop(trow.name, None)
        else:
            section[trow.name] = {**section.get(trow.name, {}), **dict(trow.config)}
    from billing.models import PlanLimit

    limits = PlanLimit.objects.filter(plan=tenant.plan).values(*LIMIT_FIELDS).first() or {}
    return Resolved(tenant_id=str(tenant.id), plan=tenant.plan, limits=limits, **sections)


def resolve() -> Resolved:
    """The current tenant's entitlements (cached)."""
    tenant_id = require_tenant_id()
    key = cache_key(tenant_id)
    cached = cache.get(key)
    if cached is not None:
        return Resolved(**cached)
    resolved = resolve_from_rows(Tenant.objects.get(id=tenant_id))
    cache.set(key, resolved.as_dict(), settings.REGISTRY_CACHE_SECONDS)
    return resolved


def invalidate(tenant_id: uuid.UUID | str) -> None:
    cache.delete(cache_key(tenant_id))


def invalidate_plan(plan: str) -> None:
    cache.delete_many(
        [cache_key(t) for t in Tenant.objects.filter(plan=plan).values_list("id", flat=True)]
    )
