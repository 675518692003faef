"""Changing a tenant's own entitlement rows (grants with config, revokes of plan defaults).

Used by the API (`/api/v1/registry/entitlements/`) and the dashboard's Tools & models page;
both validate with `entitlement_errors` and `destination_refusal` (a URL Playbook would not
call) and record `registry.changed` in the same transaction. The resolved registry is
invalidated by the model's signals (agents.apps).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from agents.models import EntitlementKind, TenantEntitlement
from agents.tools import TOOLS
from tenants.outbound import OutboundRefused, check_url

MODEL_PROVIDERS = ("offline", "openai", "anthropic", "openai_compatible")
MAX_PROMPT_LENGTH = 8000


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
    from audit.actions import record_audit_event

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
    """Create or replace the tenant's row for (kind, name). Raises ValidationError."""
    config = dict(config or {})
    row = TenantEntitlement.objects.filter(kind=kind, name=name).first()
    errors = entitlement_errors(kind, name, effect, config, exclude_pk=row.pk if row else None)
    if errors:
        raise ValidationError(errors)
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
