"""What a conversation looks like to the person reading it, for the chat and the dashboard.

A client sees only what was sent to her, plus a status line while the assistant works or her
consultant reviews; the team sees every draft and rejected draft too. `Thread.version` changes
whenever anything the reader can see changes, so the pages poll cheaply: an unchanged version
is a 204 with no body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from agents.models import AgentRun
from conversations.models import Conversation, Message

# Runs still on their way to an answer, as the client is told about them.
PENDING_RUN_STATUSES = (AgentRun.Status.QUEUED, AgentRun.Status.RUNNING)


@dataclass(frozen=True)
class StatusLine:
    kind: str  # "thinking", "waiting", "reviewing", "failed"
    text: str


@dataclass(frozen=True)
class Thread:
    conversation: Conversation
    messages: list[Message]
    status: StatusLine | None
    version: str


# What the team is told for failures that have a cause they can act on (AgentRun.error).
RUN_FAILURES = {
    "credential_store_unavailable": (
        "The agent could not answer: the credential store (KMS or Vault) did not unlock the "
        "model's key in time. Nothing else is affected; ask again in a minute, or reply "
        "yourself."
    ),
}


def status_line(run: AgentRun | None, *, for_client: bool) -> StatusLine | None:
    """What the reader is told about the conversation's latest agent run."""
    if run is None:
        return None
    if run.status == AgentRun.Status.QUEUED and run.error:
        # An attempt had to wait (the limiter or the database briefly unavailable): the run
        # tries again by itself (agents.runs.run_agent).
        if for_client:
            return StatusLine(
                "waiting",
                "The assistant is briefly unavailable. Your question is saved and will be "
                "answered as soon as it is back.",
            )
        return StatusLine(
            "waiting", f"The agent is waiting to try again ({run.error}); nothing to do."
        )
    if run.status in PENDING_RUN_STATUSES:
        return StatusLine("thinking", "The assistant is preparing an answer…")
    if run.status == AgentRun.Status.AWAITING_REVIEW:
        if for_client:
            return StatusLine(
                "reviewing",
                "Your consultant is reviewing the answer. You will see it here as soon as "
                "it is sent.",
            )
        return StatusLine("reviewing", "A draft answer is waiting for review.")
    if run.status == AgentRun.Status.FAILED:
        if for_client:
            return StatusLine(
                "failed",
                "The assistant could not answer this one. Your consultant can see your "
                "question and will reply.",
            )
        return StatusLine(
            "failed",
            RUN_FAILURES.get(run.error, f"The agent run failed ({run.error or 'error'})."),
        )
    return None


def load_thread(conversation: Conversation, *, for_client: bool) -> Thread:
    messages = conversation.messages.select_related("author", "reviewed_by").order_by(
        "created_at", "id"
    )
    if for_client:  # drafts and rejected drafts are the consultant's
        messages = messages.filter(status=Message.Status.SENT)
    items = list(messages)
    run = (
        AgentRun.objects.filter(conversation=conversation)
        .only("id", "status", "error")
        .order_by("-created_at")
        .first()
    )
    status = status_line(run, for_client=for_client)
    return Thread(conversation, items, status, thread_version(items, run, status))


def thread_version(messages: list[Message], run: AgentRun | None, status: StatusLine | None) -> str:
    parts: list[Any] = [(str(m.id), m.status, m.sender, m.body) for m in messages]
    parts.append((str(run.id) if run else "", status.kind if status else ""))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
