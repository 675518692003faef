"""Agent runs: queued by a client's message, executed in Celery, paused for review, resumed
by the consultant's decision. Each state change is audited in its own transaction.

Failures and redelivery (`run_agent`):
- An attempt is all or nothing. The graph runs in a savepoint of the task's transaction; what
  it wrote is kept only if it finishes or pauses for review (or halts at the hard cap). The
  usage of calls already made is written again after a rollback (billing.usage.restore_usage).
- The limiter refusing for now (RateLimited), the limiter's Redis being unreachable
  (LimiterUnavailable, or any Redis error), or the database connection breaking are waits,
  not failures: the run stays `queued`, with the reason in `error`, and is tried again after
  5, 10, 20... seconds (AGENT_RUN_*). After AGENT_RUN_MAX_ATTEMPTS it is `failed`.
- Every attempt starts from the beginning: LangGraph's checkpoints are committed as they are
  written (agents.checkpointer), so an attempt that died or rolled back leaves some, which a new
  attempt deletes rather than replays (it would see the conversation twice).
- Deliveries are idempotent: the task locks the run's row and does nothing unless the run is
  `queued`. A task redelivered after its worker died, delivered twice, or still running past
  the broker's visibility timeout neither calls the model again nor bills or audits again.
- A run whose task was lost altogether (the broker's Redis restarted without its data) is
  queued again by the beat (`requeue_stalled_runs`) after AGENT_RUN_STALLED_SECONDS.
"""

from __future__ import annotations

import functools
import logging
import random
import uuid
from datetime import timedelta
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Reject, Retry
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Q
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
from billing.limiter import HardCapReached, LimiterUnavailable, RateLimited
from billing.usage import restore_usage
from config.api_errors import database_unavailable
from config.telemetry import bind_agent_run
from conversations.models import Conversation, Correction, Message
from tenants.celery import SystemTask, TenantTask, fan_out
from tenants.context import require_tenant_id
from tenants.models import Tenant
from tenants.outbound import outbound_error_in
from tenants.vault.backends import CredentialStoreUnavailable

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


# Reasons to wait and try again, not to fail: the limiter refuses for now or cannot be
# reached (any Redis error: the limiter's and the cache's), the database connection broke.
WAIT_ERRORS: tuple[type[Exception], ...] = (
    RateLimited,
    LimiterUnavailable,
    redis.RedisError,
    OperationalError,
    InterfaceError,
)


class RunWaiting(Exception):
    """The attempt could not go on for now; the run is saved `queued` with the reason."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause
        self.reason = type(cause).__name__


def _set_live(run: AgentRun) -> None:
    """Live status for the API; best effort (a Redis outage must not break the run)."""
    try:
        cache.set(live_key(run.id), {"status": run.status}, 3600)
    except Exception:
        logger.warning("could not write the live status of run %s", run.id)


def _clear_live(run: AgentRun) -> None:
    try:
        cache.delete(live_key(run.id))
    except Exception:
        logger.warning("could not clear the live status of run %s", run.id)


def execute_run(run: AgentRun) -> AgentRun:
    """Run the graph until it finishes or pauses for review. A reason to wait (WAIT_ERRORS)
    leaves the run `queued` with the reason in `error` and raises RunWaiting (or, when the
    database is gone and nothing could be saved, the database's error); any other error
    fails the run."""
    if run.status not in (AgentRun.Status.QUEUED, AgentRun.Status.FAILED):
        return run
    run.status, run.started_at, run.error = AgentRun.Status.RUNNING, timezone.now(), ""
    _set_live(run)
    try:
        with bind_agent_run(run.id, user_id=run.requested_by_id), transaction.atomic():
            checkpointer = TenantCheckpointSaver()
            # A new attempt starts over: what an earlier attempt checkpointed is not replayed.
            checkpointer.delete_thread(str(run.id))
            graph = build_graph(run, registry.resolve(fresh=True), checkpointer)
            graph.invoke(
                {"messages": conversation_history(run), "question": run.trigger_message.body},
                _config(run),
            )
    except HardCapReached:
        restore_usage(run)
        halt_for_spend_cap(run)
    except WAIT_ERRORS as exc:
        # The run's work rolled back (its usage is kept); the task tries again later. If the
        # database itself is gone this raises the database's error, and nothing is written.
        restore_usage(run)
        run.status, run.error = AgentRun.Status.QUEUED, type(exc).__name__
        run.save(update_fields=["status", "started_at", "error", "model_name"])
        raise RunWaiting(exc) from exc
    except CredentialStoreUnavailable as exc:
        # The KMS or Vault could not unlock the model's key: this run fails clearly (the
        # consultant sees why, the client that her consultant will reply); nothing waits.
        restore_usage(run)
        logger.warning("agent run %s failed: %s", run.id, exc)
        fail_run(run, CredentialStoreUnavailable.code)
    except Exception as exc:
        restore_usage(run)
        refused = outbound_error_in(exc)
        if refused is None:
            logger.exception("agent run %s failed", run.id)
            fail_run(run, type(exc).__name__)
        else:
            # A model or embeddings server Playbook may not call (a private base_url): the
            # consultant reads why; no key was sent.
            logger.warning("agent run %s: outbound call refused (%s)", run.id, refused.code)
            fail_run(run, refused.message, code=refused.code)
    finally:
        _clear_live(run)
    return run


def fail_run(run: AgentRun, error: str, **context: Any) -> None:
    run.status, run.error, run.finished_at = AgentRun.Status.FAILED, error, timezone.now()
    run.save(update_fields=["status", "error", "finished_at", "model_name"])
    record_audit_event(
        "agent.run_failed",
        actor_type="agent",
        resource_type="agent_run",
        resource_id=run.id,
        agent_run_id=run.id,
        context={"error": error, **context},
    )


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


def retry_delay(attempt: int, exc: BaseException | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential backoff with jitter, or as long as
    the rate limiter says when that is longer."""
    base = settings.AGENT_RUN_RETRY_BACKOFF_SECONDS * 2 ** max(0, attempt - 1)
    delay = min(settings.AGENT_RUN_RETRY_BACKOFF_MAX_SECONDS, base)
    delay *= random.uniform(0.5, 1.0)  # noqa: S311 (spreads retries after an outage)
    if isinstance(exc, RateLimited):
        delay = max(delay, float(exc.retry_after))
    return delay


# Queueing the next attempt retries for a few seconds while the broker (the limiter's Redis,
# by default) is unreachable: a blip is bridged. After that the task is rejected back to the
# queue; if the broker is still down, its message stays unacknowledged in Redis and comes back
# after the visibility timeout, or the beat queues the run again (requeue_stalled_runs).
RETRY_PUBLISH_POLICY = {
    "max_retries": 10,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 5,
}


def _retry_later(task: Task, run_id: str, tenant_id: str, attempt: int, delay: float) -> None:
    """Queue the next attempt. If the broker cannot take it, the message being processed goes
    back to the queue instead (or, with the broker still down, stays unacknowledged there and
    is redelivered after the visibility timeout): a waiting run is not dropped."""
    options: dict[str, Any] = {
        "countdown": delay,
        "retries": attempt,  # what the next attempt sees as request.retries
        "retry": True,
        "retry_policy": RETRY_PUBLISH_POLICY,
    }
    try:
        task.apply_async(args=(run_id,), kwargs={"tenant_id": tenant_id}, **options)
    except Exception as exc:
        logger.warning("could not queue the next attempt of run %s; requeueing", run_id)
        raise Reject(exc, requeue=True) from exc


class RunAgentTask(TenantTask):
    """An attempt that finds the database unreachable, when it starts or while it runs, wrote
    nothing (its transaction is gone): it is tried again later, like any other wait."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            attempt = int(self.request.retries or 0) + 1
            if attempt >= settings.AGENT_RUN_MAX_ATTEMPTS:
                raise
            run_id = str(args[0] if args else kwargs["run_id"])
            delay = retry_delay(attempt, exc)
            logger.warning("agent run %s: database unavailable (%s)", run_id, type(exc).__name__)
            _retry_later(self, run_id, str(kwargs["tenant_id"]), attempt, delay)
            raise Retry(exc=exc, when=timezone.now() + timedelta(seconds=delay)) from exc


@shared_task(
    bind=True, base=RunAgentTask, name="agents.run_agent", audit_event=False, max_retries=None
)
def run_agent(self: Task, run_id: str, *, tenant_id: str) -> str:
    """One attempt at a run (see the module docstring). Not audited as a task: the run
    audits its own state changes, once each, however many times it is delivered."""
    attempt = int(self.request.retries or 0) + 1
    run = (
        AgentRun.objects.select_for_update(of=("self",))
        .select_related("conversation", "trigger_message")
        .filter(id=run_id)
        .first()
    )
    if run is None:
        return "missing"
    if run.status != AgentRun.Status.QUEUED:
        return run.status  # done already: a redelivery or a duplicate
    try:
        return execute_run(run).status
    except RunWaiting as waiting:
        if attempt >= settings.AGENT_RUN_MAX_ATTEMPTS:
            fail_run(run, waiting.reason, attempts=attempt)
            return run.status
        delay = retry_delay(attempt, waiting.cause)
        logger.warning(
            "agent run %s waits (%s); attempt %d in %.1f s",
            run_id,
            waiting.reason,
            attempt + 1,
            delay,
        )
        # Queued once the run's state (queued, why, the usage so far) is committed.
        transaction.on_commit(lambda: _retry_later(self, run_id, tenant_id, attempt, delay))
        return run.status


@shared_task(name="agents.requeue_stalled_runs", base=TenantTask, audit_event=False)
def requeue_stalled_runs(*, tenant_id: str) -> int:
    """Queue again the tenant's runs that are `queued` but were not tried (nor queued again)
    for AGENT_RUN_STALLED_SECONDS: their task was lost. A run whose task was only slow to
    come is delivered twice, which does nothing the second time (run_agent's row lock)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.AGENT_RUN_STALLED_SECONDS)
    stalled = list(
        # A run whose row is locked is being tried right now: not stalled.
        AgentRun.objects.select_for_update(skip_locked=True)
        .filter(status=AgentRun.Status.QUEUED)
        .filter(Q(started_at__lt=cutoff) | Q(started_at__isnull=True, created_at__lt=cutoff))
        .order_by("created_at")
        .values_list("id", flat=True)[:500]
    )
    if stalled:
        # started_at is "last tried or queued again": the next sweep leaves them alone.
        AgentRun.objects.filter(id__in=stalled).update(started_at=now)
        logger.warning("queueing %d stalled agent run(s) again", len(stalled))
        # A periodic tick: audited when it did something, not on every tick.
        record_audit_event(
            "agent.runs_requeued",
            actor_type="system",
            resource_type="agent_run",
            context={"runs": [str(r) for r in stalled], "reason": "stalled"},
        )
        for run_id in stalled:
            transaction.on_commit(
                functools.partial(run_agent.delay, str(run_id), tenant_id=tenant_id)
            )
    return len(stalled)


@shared_task(name="agents.requeue_all_stalled_runs", base=SystemTask)
def requeue_all_stalled_runs() -> int:
    """Fan out (Celery beat): one tenant task per tenant."""
    return fan_out(requeue_stalled_runs)


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
    graph = build_graph(run, registry.resolve(fresh=True), TenantCheckpointSaver())
    graph.invoke(Command(resume=decision), _config(run))
    message.refresh_from_db()
    return message
