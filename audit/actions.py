"""`record_audit_event`: the one way to write the audit log.

It calls the database function `audit_record_event` in the caller's transaction (inside the
tenant context): a change that rolls back leaves no event, a committed change always has
one, and the function chains the event onto the tenant's log under a per-tenant lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connection

from audit.context import current_request_info
from audit.models import AuditEvent
from audit.payload import json_safe, payload_digest, redact
from audit.verify_export import canonical_json
from tenants.context import current_support_session_id, require_tenant_id


@dataclass(frozen=True)
class RecordedEvent:
    id: int
    seq: int
    hash: str


def _actor(actor: Any) -> tuple[str, str, str]:
    """(actor_type, actor_id, label) for a user, staff, an API key principal, or the system."""
    from accounts.support import is_support_staff

    if current_support_session_id() is not None or is_support_staff(actor):
        return AuditEvent.ActorType.SUPPORT, str(getattr(actor, "pk", "") or ""), str(actor or "")
    if actor is None or not getattr(actor, "is_authenticated", False):
        return AuditEvent.ActorType.SYSTEM, "", "system"
    kind = getattr(actor, "actor_type", AuditEvent.ActorType.USER)
    return kind, str(actor.pk), str(actor)


def record_audit_event(
    action: str,
    *,
    actor: Any = None,
    actor_type: str | None = None,
    resource_type: str = "",
    resource_id: object = "",
    agent_run_id: object = "",
    payload: Any = None,
    context: dict[str, Any] | None = None,
) -> RecordedEvent:
    """Append an event to the current tenant's log, in the current transaction.

    `payload`: what the action was given (hashed, secrets redacted, never stored); by default
    the current request's payload. `context`: small, non-secret details stored with the event.
    """
    require_tenant_id()
    kind, actor_id, label = _actor(actor)
    details = json_safe(redact(dict(context or {})))
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
    if payload is not None:
        payload_sha256 = payload_digest(payload)
    else:
        payload_sha256 = info.payload_sha256 if info else ""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT event_id, event_seq, event_hash FROM audit_record_event("
            "%s, %s, %s, %s, %s, %s, %s, %s, %s::inet, %s, %s, %s)",
            [
                actor_type or kind,
                actor_id[:64],
                label[:255],
                action[:64],
                resource_type[:64],
                "" if resource_id is None else str(resource_id)[:64],
                info.request_id if info else "",
                "" if agent_run_id is None else str(agent_run_id)[:64],
                info.ip if info else None,
                info.user_agent if info else "",
                payload_sha256,
                canonical_json(details),
            ],
        )
        event_id, seq, digest = cursor.fetchone()
    return RecordedEvent(id=event_id, seq=seq, hash=digest)


@contextmanager
def audit_operator() -> Iterator[None]:
    """Read the whole log of the current tenant from an operator command (export, verify):
    sets `app.audit_operator`, which the audit read policy honours. Not for request paths."""
    require_tenant_id()
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('app.audit_operator', 'on', true)")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.audit_operator', '', true)")
