"""`record_audit_event`: the one way to write the audit log.

It writes in the caller's transaction (inside the tenant context), so a change that rolls
back leaves no event and a committed change always has one.
"""

from __future__ import annotations

from typing import Any

from audit.context import current_request_info
from audit.models import AuditEvent
from tenants.context import current_support_session_id, require_tenant_id


def _actor(actor: Any) -> tuple[str, str, str]:
    """(actor_type, actor_id, label) for a user, an API key principal, or the system."""
    staff = getattr(actor, "is_staff", False) and getattr(actor, "tenant_id", None) is None
    if current_support_session_id() is not None or staff:
        return AuditEvent.ActorType.SUPPORT, str(getattr(actor, "pk", "")), str(actor or "")
    if actor is None or not getattr(actor, "is_authenticated", False):
        return AuditEvent.ActorType.SYSTEM, "", "system"
    kind = getattr(actor, "actor_type", AuditEvent.ActorType.USER)
    return kind, str(actor.pk), str(actor)


def record_audit_event(
    action: str,
    *,
    actor: Any = None,
    resource_type: str = "",
    resource_id: object = "",
    context: dict[str, Any] | None = None,
) -> AuditEvent:
    require_tenant_id()
    actor_type, actor_id, label = _actor(actor)
    details = dict(context or {})
    support_session = current_support_session_id()
    if support_session is not None:
        from accounts.models import SupportSession

        details["support_session"] = str(support_session)
        # Readable through the session's own self-read policy.
        details["support_reason"] = (
            SupportSession.all_tenants.filter(id=support_session)
            .values_list("reason", flat=True)
            .first()
        )
    info = current_request_info()
    return AuditEvent.objects.create(
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=label[:255],
        action=action,
        resource_type=resource_type,
        resource_id=str(resource_id or "")[:64],
        request_id=info.request_id if info else "",
        ip=info.ip if info else None,
        user_agent=info.user_agent if info else "",
        context=details,
    )
