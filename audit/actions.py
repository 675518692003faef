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
from tenants.context import OPERATOR, acting_as, require_tenant_id


@dataclass(frozen=True)
class RecordedEvent:
    id: int
    seq: int
    hash: str


def _system_actor(actor: Any) -> tuple[str, str]:
    """(actor_id, label) that a system context may state for itself."""
    if actor is None or not getattr(actor, "is_authenticated", False):
        return "", "system"
    return str(actor.pk), str(actor)


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

    The database takes the actor from the verified context: a user's request is recorded
    as that user, an API key as the key, support staff as themselves with their session and
    its reason. `actor_type` ("system" or "agent") and `actor` are used only by the system's
    own contexts (Celery tasks, commands), which name their actor.

    `payload`: what the action was given (hashed, secrets redacted, never stored); by default
    the current request's payload. `context`: small, non-secret details stored with the event.
    """
    require_tenant_id()
    actor_id, label = _system_actor(actor)
    details = json_safe(redact(dict(context or {})))
    info = current_request_info()
    if payload is not None:
        payload_sha256 = payload_digest(payload)
    else:
        payload_sha256 = info.payload_sha256 if info else ""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT event_id, event_seq, event_hash FROM public.audit_record_event("
            "%s, %s, %s, %s, %s, %s, %s, %s, %s::inet, %s, %s, %s)",
            [
                actor_type or getattr(actor, "actor_type", "") or AuditEvent.ActorType.SYSTEM,
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
    the block runs as the operator principal, which the audit log's policy admits. Not for
    request paths (only the app can sign it)."""
    with acting_as(OPERATOR):
        yield
