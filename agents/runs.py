"""Agent runs: queued by a client's message, executed in Celery, paused for review, resumed
by the consultant's decision. Each state change is audited in its own transaction."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import shared_task
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.types import Command

from accounts.models import User
from agents import registry
from agents.checkpointer import TenantCheckpointSaver
from agents.embeddings import get_embedder
from agents.graph import build_graph
from agents.models import AgentRun
from audit.actions import record_audit_event
from billing.limiter import HardCapReached, RateLimited
from billing.usage import restore_usage
from config.telemetry import bind_agent_run
from conversations.models import Conversation, Correction, Message
from tenants.context import require_tenant_id
from tenants.models import Tenant

logger = logging.getLogger(__name__)

REVIEW_ACTIONS = ("approve", "edit", "override", "reject")


class ReviewError(Exception):
    """A review decision that cannot be applied (message is no longer a draft, etc.)."""


def live_key(run_id: uuid.UUID | str) -> str:
    return f"agent-run:{{{require_tenant_id()}}}:{run_id}"


# --------------------------------------------------------------------------- starting


@transaction.atomic
def start_agent_run(*, conversation: Conversation, trigger: Message, requested_by: Any) -> AgentRun:
    run = AgentRun.objects.create(
        conversation=conversation,
        trigger_message=trigger,
        requested_by=requested_by if isinstance(requested_by, User) else None,
    )
    record_audit_event(
        "agent.run_queued",
        actor=requested_by,
        resource_type="agent_run",
        resource_id=run.id,
        agent_run_id=run.id,
    )
    tenant_id = str(require_tenant_id())
    transaction.on_commit(lambda: run_agent.delay(str(run.id), tenant_id=tenant_id))
    return run


def conversation_history(run: AgentRun) -> list[AnyMessage]:
    """What the client and the assistant said so far, up to the triggering message."""
    history: list[AnyMessage] = []
    sent = run.conversation.messages.filter(
        status=Message.Status.SENT, created_at__lte=run.trigger_message.created_at
    ).order_by("created_at")[:40]
    for message in sent:
        if message.sender == Message.Sender.CLIENT:
            history.append(HumanMessage(content=message.body))
        else:
            history.append(AIMessage(content=message.body))
    if not history or history[-1].content != run.trigger_message.body:
        history.append(HumanMessage(content=run.trigger_message.body))
    return history


def _config(run: AgentRun) -> dict[str, Any]:
    return {"configurable": {"thread_id": str(run.id)}}


def execute_run(run: AgentRun) -> AgentRun:
    """Run the graph until it finishes or pauses for review."""
    if run.status not in (AgentRun.Status.QUEUED, AgentRun.Status.FAILED):
        return run
    run.status, run.started_at, run.error = AgentRun.Status.RUNNING, timezone.now(), ""
    cache.set(live_key(run.id), {"status": run.status}, 3600)
    resolved = registry.resolve()
    graph = build_graph(run, resolved, TenantCheckpointSaver())
    try:
        with bind_agent_run(run.id, user_id=run.requested_by_id), transaction.atomic():
            graph.invoke(
                {"messages": conversation_history(run), "question": run.trigger_message.body},
                _config(run),
            )
    except HardCapReached:
        restore_usage(run)
        halt_for_spend_cap(run)
    except RateLimited:
        # The run's work rolled back (its usage is kept); the task retries after the window.
        restore_usage(run)
        run.status = AgentRun.Status.QUEUED
        run.save(update_fields=["status", "started_at", "error"])
        raise
    except Exception as exc:
        restore_usage(run)
        logger.exception("agent run %s failed", run.id)
        run.status, run.error, run.finished_at = (
            AgentRun.Status.FAILED,
            type(exc).__name__,
            timezone.now(),
        )
        run.save(update_fields=["status", "error", "finished_at", "model_name"])
        record_audit_event(
            "agent.run_failed",
            actor_type="agent",
            resource_type="agent_run",
            resource_id=run.id,
            agent_run_id=run.id,
            context={"error": type(exc).__name__},
        )
    finally:
        cache.delete(live_key(run.id))
    return run


HALT_NOTICE = (
    "This assistant has reached its usage limit for this month, so it cannot answer right "
    "now. Your consultant has been told and will reply to you herself."
)


def halt_for_spend_cap(run: AgentRun) -> None:
    """The hard cap is reached: stop cleanly, tell the client and the consultant."""
    run.status, run.finished_at = AgentRun.Status.HALTED, timezone.now()
    run.error = "spend_cap_reached"
    notice = Message.objects.create(
        conversation=run.conversation,
        sender=Message.Sender.AGENT,
        body=HALT_NOTICE,
        status=Message.Status.SENT,
    )
    run.draft_message, run.output = notice, HALT_NOTICE
    run.save(
        update_fields=[
            "status",
            "finished_at",
            "error",
            "draft_message",
            "output",
            "model_name",
            "started_at",
        ]
    )
    record_audit_event(
        "billing.hard_cap_reached",
        actor_type="system",
        resource_type="agent_run",
        resource_id=run.id,
        agent_run_id=run.id,
    )


@shared_task(
    name="agents.run_agent",
    autoretry_for=(RateLimited,),
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=8,
)
def run_agent(run_id: str, *, tenant_id: str) -> str:
    run = AgentRun.objects.select_related("conversation", "trigger_message").get(id=run_id)
    return execute_run(run).status


# --------------------------------------------------------------------------- graph steps


def needs_review(policy: str, *, confidence: str, handoff: bool) -> bool:
    if policy == "auto_send":
        return handoff  # a handoff always reaches the consultant
    if policy == "flagged":
        return handoff or confidence == "low"
    return True


def create_answer(
    run: AgentRun,
    *,
    answer: str,
    passages: list[dict[str, Any]],
    confidence: str,
    handoff_reason: str | None,
) -> tuple[Message, bool]:
    """The finalize step: the answer becomes a draft for review or is sent, per policy."""
    policy = Tenant.objects.get(id=run.tenant_id).review_policy
    review = needs_review(policy, confidence=confidence, handoff=bool(handoff_reason))
    citations = [
        {
            "n": i,
            "document": p.get("document_id"),
            "title": p.get("title"),
            "chunk": p.get("chunk_id"),
            "quote": str(p.get("text", ""))[:300],
        }
        for i, p in enumerate(passages[:5], start=1)
    ]
    message = Message.objects.create(
        conversation=run.conversation,
        sender=Message.Sender.AGENT,
        body=answer or "(The assistant had nothing to say.)",
        status=Message.Status.DRAFT if review else Message.Status.SENT,
        citations=citations,
    )
    run.draft_message = message
    run.output = message.body
    run.confidence, run.handoff_reason = confidence, handoff_reason or ""
    run.status = AgentRun.Status.AWAITING_REVIEW if review else AgentRun.Status.COMPLETED
    if not review:
        run.finished_at = timezone.now()
    run.save(
        update_fields=[
            "draft_message",
            "output",
            "confidence",
            "handoff_reason",
            "status",
            "finished_at",
            "model_name",
            "started_at",
            "error",
        ]
    )
    record_audit_event(
        "agent.draft_created" if review else "agent.answer_sent",
        actor_type="agent",
        resource_type="message",
        resource_id=message.id,
        agent_run_id=run.id,
        context={
            "confidence": confidence,
            "handoff": handoff_reason or "",
            "citations": len(citations),
        },
    )
    return message, review


def apply_review(run: AgentRun, decision: dict[str, Any]) -> Message:
    """The review step, resumed with the consultant's decision."""
    action = decision.get("action")
    reviewer = User.objects.get(pk=decision["reviewer_id"])
    message = Message.objects.get(id=run.draft_message_id)
    now = timezone.now()
    message.reviewed_by, message.reviewed_at = reviewer, now
    fields = ["reviewed_by", "reviewed_at", "status"]
    if action == "reject":
        message.status = Message.Status.REJECTED
        message.review_note = str(decision.get("note", ""))
        fields.append("review_note")
    else:
        message.status = Message.Status.SENT
        if action in ("edit", "override"):
            message.original_draft, message.body = message.body, str(decision["text"])
            fields += ["original_draft", "body"]
            if action == "override":
                message.sender, message.author = Message.Sender.CONSULTANT, reviewer
                message.citations = []
                fields += ["sender", "author", "citations"]
    message.save(update_fields=fields)
    if action in ("edit", "override"):
        embedder = get_embedder(registry.resolve().embedder)
        Correction.objects.create(
            message=message,
            kind=Correction.Kind.EDIT if action == "edit" else Correction.Kind.OVERRIDE,
            question=run.trigger_message.body,
            draft=message.original_draft,
            final=message.body,
            embedding=embedder.embed_query(run.trigger_message.body),
            embedding_model=embedder.name,
            created_by=reviewer,
        )
    run.status, run.finished_at = AgentRun.Status.COMPLETED, now
    run.save(update_fields=["status", "finished_at"])
    record_audit_event(
        {
            "approve": "review.approved",
            "edit": "review.edited",
            "override": "review.overridden",
            "reject": "review.rejected",
        }[str(action)],
        actor=reviewer,
        resource_type="message",
        resource_id=message.id,
        agent_run_id=run.id,
        context={"note": str(decision.get("note", ""))[:500]} if action == "reject" else {},
    )
    return message


@transaction.atomic
def review_draft(
    *, message: Message, reviewer: User, action: str, text: str = "", note: str = ""
) -> Message:
    """Apply a consultant's decision by resuming the paused run."""
    if action not in REVIEW_ACTIONS:
        raise ReviewError(f"Unknown action {action!r}.")
    # Lock the draft's row: a concurrent decision waits here, then finds it decided.
    status = (
        Message.objects.select_for_update().filter(id=message.id).values_list("status", flat=True)
    ).first()
    if status is None:  # deleted, or not this tenant's (row-level security)
        raise ReviewError("This draft does not exist.")
    if status != Message.Status.DRAFT:
        raise ReviewError("This draft was already reviewed.")
    if action in ("edit", "override") and not text.strip():
        raise ReviewError("Write the answer to send.")
    run = (
        AgentRun.objects.select_related("conversation", "trigger_message")
        .filter(draft_message=message)
        .first()
    )
    if run is None or run.status != AgentRun.Status.AWAITING_REVIEW:
        raise ReviewError("This draft has no paused run to resume.")
    decision = {
        "action": action,
        "text": text.strip(),
        "note": note.strip(),
        "reviewer_id": reviewer.pk,
    }
    graph = build_graph(run, registry.resolve(), TenantCheckpointSaver())
    graph.invoke(Command(resume=decision), _config(run))
    message.refresh_from_db()
    return message
