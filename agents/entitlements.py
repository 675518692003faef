"""Changing a tenant's own entitlement rows (grants with config, revokes of plan defaults),
and the operator's overrides beyond a plan.

Used by the API (`/api/v1/registry/entitlements/`) and the dashboard's Tools & models page;
both validate with `entitlement_errors`, then `check_within_plan` (the plan is a ceiling:
`NotInPlan`, a 403) and `destination_refusal` (a URL Playbook would not call), and record
`registry.changed` in the same transaction. Overrides are made by platform staff in the
support admin (`grant_override`, `remove_override`), each with a reason that lands in the
tenant's audit log. The resolved registry is invalidated by the models' signals
(agents.apps).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from accounts.models import User
from agents import registry
from agents.models import EntitlementKind, EntitlementOverride, TenantEntitlement
from agents.tools import TOOLS
from audit.actions import record_audit_event
from tenants.context import Principal, platform_context, tenant_context
from tenants.models import Tenant
from tenants.outbound import OutboundRefused, check_url

MODEL_PROVIDERS = ("offline", "openai", "anthropic", "openai_compatible")
MAX_PROMPT_LENGTH = 8000
MIN_OVERRIDE_REASON_LENGTH = 10
REASON_NEEDED = (
    f"Give the reason (at least {MIN_OVERRIDE_REASON_LENGTH} characters): the tenant's "
    "admins read it in their audit log."
)
PROVIDER_NAMES = {
    "offline": "offline",
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "openai_compatible": "OpenAI-compatible",
}


class NotInPlan(PermissionDenied):
    """A grant beyond the tenant's plan (and its operator overrides). The API answers 403
    `{"code": "not_in_plan", "message": ..., "plan": ...}`; the dashboard, a form error."""

    code = "not_in_plan"

    def __init__(self, message: str, plan: str) -> None:
        super().__init__(message)
        self.message, self.plan = message, plan


def _plan_label(plan: str) -> str:
    return str(dict(Tenant.Plan.choices).get(plan, plan))


def _refusal(kind: str, name: str, config: dict[str, Any], plan: str) -> str:
    if kind == EntitlementKind.TOOL:
        item = f"The {name} tool is"
    else:
        provider, model = registry.model_identity(name, config)
        item = f"The {PROVIDER_NAMES.get(provider, provider)} model {model} is"
    return (
        f"{item} not in the {_plan_label(plan)} plan. Change to a plan that includes it, or "
        "ask Playbook support for an exception."
    )


def check_within_plan(kind: Any, name: Any, effect: Any, config: dict[str, Any]) -> None:
    """Raise NotInPlan when a grant of the current tenant would reach beyond its plan plus
    the operator's overrides. Revokes always narrow; prompts and data sources are not capped.
    The grant is judged as the registry resolves it: merged onto the plan's own entry."""
    if effect == TenantEntitlement.Effect.REVOKE or kind not in registry.CAPPED_KINDS:
        return
    tenant = registry.current_tenant()
    merged = {**registry.plan_defaults(tenant.plan, kind, name), **config}
    if not registry.ceiling_for(tenant).admits(kind, name, merged):
        raise NotInPlan(_refusal(kind, name, merged, tenant.plan), tenant.plan)


def entitlement_errors(
    kind: Any, name: Any, effect: Any, config: Any, *, exclude_pk: Any = None
) -> dict[str, list[str]]:
    """What is wrong with this row, by field (empty when it may be saved)."""
    if not isinstance(config, dict):
        return {"config": ["Must be a JSON object."]}
    others = TenantEntitlement.objects.filter(kind=kind, name=name)
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    if others.exists():  # one row per kind and name (tenant_entitlement_key)
        return {"name": ["Your tenant already has a row for this kind and name; change it."]}
    if effect != TenantEntitlement.Effect.GRANT:
        return {}
    if kind == EntitlementKind.TOOL and name not in TOOLS:
        return {"name": [f"Unknown tool. Available: {', '.join(sorted(TOOLS))}."]}
    if kind == EntitlementKind.MODEL:
        if config.get("provider") not in MODEL_PROVIDERS:
            return {"config": ["provider must be offline, openai, anthropic or openai_compatible."]}
        temperature = config.get("temperature", 0.2)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            return {"config": ["temperature must be 0 to 2."]}
    if kind == EntitlementKind.PROMPT and name == "system":
        text = config.get("text", "")
        if not isinstance(text, str) or len(text) > MAX_PROMPT_LENGTH:
            return {"config": [f"text must be at most {MAX_PROMPT_LENGTH} characters."]}
    return {}


# The config key of a row that holds an address Playbook calls: a model's server, the
# http_request tool's endpoint.
def _url_key(kind: Any, name: Any) -> str | None:
    if kind == EntitlementKind.MODEL:
        return "base_url"
    if kind == EntitlementKind.TOOL and name == "http_request":
        return "url"
    return None


def destination_refusal(
    kind: Any, name: Any, effect: Any, config: Any, *, previous: Any = None
) -> OutboundRefused | None:
    """Why the address in this row may not be called (tenants.outbound), when it is new or
    changed; None when it may be saved. Every call checks the address again: this only
    tells the admin now rather than at her clients' first question."""
    key = _url_key(kind, name)
    if key is None or effect != TenantEntitlement.Effect.GRANT or not isinstance(config, dict):
        return None
    url = config.get(key)
    if url in (None, "") or (isinstance(previous, dict) and previous.get(key) == url):
        return None
    if not isinstance(url, str):
        return OutboundRefused("invalid_url", f"{key} must be an http(s) address.")
    try:
        check_url(url)
    except OutboundRefused as refused:
        return refused
    return None


def _audit(acting_user: Any, row: TenantEntitlement, effect: str) -> None:
    record_audit_event(
        "registry.changed",
        actor=acting_user,
        resource_type="entitlement",
        resource_id=row.pk,
        context={"kind": row.kind, "name": row.name, "effect": effect},
    )


@transaction.atomic
def set_entitlement(
    *, acting_user: Any, kind: str, name: str, effect: str, config: dict[str, Any] | None = None
) -> TenantEntitlement:
    """Create or replace the tenant's row for (kind, name). Raises ValidationError, or
    NotInPlan for a grant beyond the plan."""
    config = dict(config or {})
    row = TenantEntitlement.objects.filter(kind=kind, name=name).first()
    errors = entitlement_errors(kind, name, effect, config, exclude_pk=row.pk if row else None)
    if errors:
        raise ValidationError(errors)
    check_within_plan(kind, name, effect, config)
    refused = destination_refusal(kind, name, effect, config, previous=row.config if row else None)
    if refused is not None:
        raise ValidationError({"config": [refused.message]})
    if row is None:
        row = TenantEntitlement(kind=kind, name=name)
    row.effect, row.config = effect, config
    row.save()
    _audit(acting_user, row, effect)
    return row


@transaction.atomic
def remove_entitlement(*, acting_user: Any, row: TenantEntitlement) -> None:
    """Delete the tenant's row: the plan's default applies again."""
    _audit(acting_user, row, "deleted")
    row.delete()


def record_entitlement_change(acting_user: Any, row: TenantEntitlement) -> None:
    """For the API's generic create/update, which saves the row itself."""
    _audit(acting_user, row, row.effect)


# --------------------------------------------------------------------------- operator overrides


def override_errors(kind: Any, name: Any, config: dict[str, Any], reason: str) -> dict[str, str]:
    """What is wrong with an override, by field (empty when it may be saved)."""
    errors: dict[str, str] = {}
    if len(reason.strip()) < MIN_OVERRIDE_REASON_LENGTH:
        errors["reason"] = REASON_NEEDED
    if kind == EntitlementKind.TOOL and name not in TOOLS:
        errors["name"] = f"Unknown tool. Available: {', '.join(sorted(TOOLS))}."
    elif kind == EntitlementKind.MODEL and config.get("provider") not in MODEL_PROVIDERS:
        errors["provider"] = "Choose the model's provider."
    elif kind not in registry.CAPPED_KINDS:
        errors["kind"] = "Only tools and models are limited by the plan."
    return errors


def _staff_label(staff: User) -> str:
    return str(staff.get_username())


@transaction.atomic
def grant_override(
    *,
    staff: User,
    tenant: Tenant,
    kind: str,
    name: str,
    reason: str,
    provider: str = "",
    model: str = "",
) -> EntitlementOverride:
    """Platform staff let `tenant`'s own grants use a tool or model beyond its plan. Written
    in a platform context, audited in the tenant's log with the reason. Raises
    ValidationError."""
    name, reason = name.strip(), reason.strip()
    config: dict[str, Any] = {}
    if kind == EntitlementKind.MODEL:
        config = {"provider": provider.strip()}
        if model.strip():
            config["model"] = model.strip()
    errors = override_errors(kind, name, config, reason)
    if errors:
        raise ValidationError(errors)
    # In a platform context (the only one that writes overrides), then in the tenant's own
    # context as this staff member for its audit log: one transaction, whatever the admin's
    # outer context (platform, or a support session).
    with platform_context(staff.pk):
        try:
            with transaction.atomic():
                override = EntitlementOverride.objects.create(
                    tenant=tenant,
                    kind=kind,
                    name=name,
                    config=config,
                    reason=reason,
                    granted_by=_staff_label(staff),
                )
        except IntegrityError:  # entitlement_override_key
            raise ValidationError({"name": "This tenant already has this override."}) from None
        with tenant_context(tenant, principal=Principal.staff(staff.pk)):
            record_audit_event(
                "registry.override_granted",
                actor=staff,
                resource_type="entitlement_override",
                resource_id=override.pk,
                context={
                    "kind": kind,
                    "name": name,
                    "reason": reason,
                    "plan": tenant.plan,
                    **config,
                },
            )
    return override


@transaction.atomic
def remove_override(*, staff: User, override: EntitlementOverride, reason: str) -> None:
    """End an override: grants that relied on it stop working at the next run."""
    reason = reason.strip()
    if len(reason) < MIN_OVERRIDE_REASON_LENGTH:
        raise ValidationError({"reason": REASON_NEEDED})
    with platform_context(staff.pk):
        tenant = Tenant.objects.get(id=override.tenant_id)
        with tenant_context(tenant, principal=Principal.staff(staff.pk)):
            record_audit_event(
                "registry.override_removed",
                actor=staff,
                resource_type="entitlement_override",
                resource_id=override.pk,
                context={"kind": override.kind, "name": override.name, "reason": reason},
            )
        override.delete()
