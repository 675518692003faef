"""Tasks that report what they can see, for the TenantTask tests (loaded by the test worker
with `--include tests.celery_probe`)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import connection

from audit.actions import record_audit_event
from conversations.models import Conversation
from tenants.celery import SystemTask
from tenants.context import TenantScopeError, current_tenant_id


def _raw_conversation_ids() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id::text FROM conversations_conversation ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


@shared_task(name="tests.visible_conversations")
def visible_conversations(*, tenant_id: str) -> dict[str, Any]:
    return {
        "context": str(current_tenant_id()),
        "orm": sorted(str(i) for i in Conversation.objects.values_list("id", flat=True)),
        "raw": _raw_conversation_ids(),
    }


@shared_task(name="tests.system_sweep", base=SystemTask)
def system_sweep() -> dict[str, Any]:
    try:
        Conversation.objects.count()
        orm = "visible"
    except TenantScopeError:
        orm = "refused"
    return {"context": current_tenant_id(), "orm": orm, "raw": _raw_conversation_ids()}


@shared_task(name="tests.fails_after_writing")
def fails_after_writing(*, tenant_id: str) -> None:
    """Writes an audit event, then fails: the whole run must roll back (audit tests)."""
    record_audit_event("tests.written_before_failure", actor_type="system")
    raise RuntimeError("the probe task fails after writing")
