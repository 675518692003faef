"""The entitlement registry: which tools, models, prompts and data sources a tenant may use,
and its plan's limits.

Rows, not code: a plan's defaults (PlanEntitlement) narrowed or configured by the tenant's
own rows (TenantEntitlement: grant with config, or revoke). The plan is a ceiling for tools
and models: a tenant's grant counts only within its plan plus the operator's overrides for
it (EntitlementOverride); anything beyond is ignored here and refused when written
(agents.entitlements). Resolved per request and cached in Redis for REGISTRY_CACHE_SECONDS
(any change to a row invalidates it at once); an agent run resolves from the rows, so a
downgraded plan binds from the next run whatever the cache holds.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache

from agents.models import EntitlementKind, EntitlementOverride, PlanEntitlement, TenantEntitlement
from billing.models import PlanLimit
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


# --------------------------------------------------------------------------- the ceiling

# The kinds the plan caps. Prompts and data sources are the tenant's own to configure.
CAPPED_KINDS = frozenset({EntitlementKind.TOOL, EntitlementKind.MODEL})


def model_identity(name: str, config: dict[str, Any]) -> tuple[str, str]:
    """(provider, model id) of a model entry, as the run uses it (agents.llm)."""
    return str(config.get("provider") or "offline"), str(config.get("model") or name)


@dataclass(frozen=True)
class Ceiling:
    """What a tenant's own grants may reach: its plan's tools and models plus the operator's
    overrides for it. A model is admitted by a plan or override model of the same provider
    whose model id is the same -- or unset, which admits every model of that provider (the
    offline responder's row)."""

    plan: str
    tools: frozenset[str]
    models: frozenset[tuple[str, str]]  # (provider, model id or "" for any)

    def admits(self, kind: str, name: str, config: dict[str, Any]) -> bool:
        if kind == EntitlementKind.TOOL:
            return name in self.tools
        if kind == EntitlementKind.MODEL:
            provider, model = model_identity(name, config)
            return (provider, "") in self.models or (provider, model) in self.models
        return True


def _ceiling_rows(rows: Any) -> tuple[set[str], set[tuple[str, str]]]:
    tools: set[str] = set()
    models: set[tuple[str, str]] = set()
    for kind, name, config in rows:
        if kind == EntitlementKind.TOOL:
            tools.add(name)
        elif kind == EntitlementKind.MODEL:
            config = dict(config or {})
            models.add((str(config.get("provider") or "offline"), str(config.get("model") or "")))
    return tools, models


def ceiling_for(tenant: Tenant) -> Ceiling:
    """The tenant's ceiling, from the rows (never cached: writes and runs check it)."""
    fields = ("kind", "name", "config")
    plan_tools, plan_models = _ceiling_rows(
        PlanEntitlement.objects.filter(plan=tenant.plan, kind__in=CAPPED_KINDS).values_list(*fields)
    )
    extra_tools, extra_models = _ceiling_rows(
        EntitlementOverride.objects.filter(tenant_id=tenant.id).values_list(*fields)
    )
    return Ceiling(
        plan=tenant.plan,
        tools=frozenset(plan_tools | extra_tools),
        models=frozenset(plan_models | extra_models),
    )


def current_tenant() -> Tenant:
    return Tenant.objects.get(id=require_tenant_id())


def plan_defaults(plan: str, kind: str, name: str) -> dict[str, Any]:
    """The plan's own config of an item (empty when the plan does not include it): what a
    tenant's grant is merged onto."""
    row = PlanEntitlement.objects.filter(plan=plan, kind=kind, name=name).first()
    return dict(row.config) if row is not None else {}


# --------------------------------------------------------------------------- resolving


def resolve_from_rows(tenant: Tenant) -> Resolved:
    sections: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in _SECTIONS.values()}
    for row in PlanEntitlement.objects.filter(plan=tenant.plan):
        sections[_SECTIONS[EntitlementKind(row.kind)]][row.name] = dict(row.config)
    ceiling = ceiling_for(tenant)
    for trow in TenantEntitlement.objects.all():
        section = sections[_SECTIONS[EntitlementKind(trow.kind)]]
        if trow.effect == TenantEntitlement.Effect.REVOKE:
            section.pop(trow.name, None)
            continue
        merged = {**section.get(trow.name, {}), **dict(trow.config)}
        # Beyond the plan (a grant from before the ceiling, or a plan since downgraded):
        # no effect, the plan's own entry (if any) stays as the plan has it.
        if ceiling.admits(trow.kind, trow.name, merged):
            section[trow.name] = merged
    limits = PlanLimit.objects.filter(plan=tenant.plan).values(*LIMIT_FIELDS).first() or {}
    return Resolved(tenant_id=str(tenant.id), plan=tenant.plan, limits=limits, **sections)


def resolve(*, fresh: bool = False) -> Resolved:
    """The current tenant's entitlements (cached; `fresh` reads the rows and re-caches: an
    agent run, so that nothing beyond the plan as it is now reaches the agent)."""
    tenant_id = require_tenant_id()
    key = cache_key(tenant_id)
    cached = None if fresh else cache.get(key)
    if cached is not None:
        return Resolved(**cached)
    resolved = resolve_from_rows(current_tenant())
    cache.set(key, resolved.as_dict(), settings.REGISTRY_CACHE_SECONDS)
    return resolved


def invalidate(tenant_id: uuid.UUID | str) -> None:
    cache.delete(cache_key(tenant_id))


def invalidate_plan(plan: str) -> None:
    cache.delete_many(
        [cache_key(t) for t in Tenant.objects.filter(plan=plan).values_list("id", flat=True)]
    )
