"""The consultant's review queue: the AI drafts waiting for her decision, with their question.

Shared by the dashboard (`conversations.views.queue`) and the API (`review_api`), so both
show the same drafts in the same order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet

from agents.models import AgentRun
from conversations.models import Message

QUEUE_PAGE_SIZE = 50
MAX_ID_DIGITS = 18  # any user id fits (bigint has 19 digits); a longer one names nobody


def client_id(raw: str) -> int | None:
    """The client a filter names (`?client=`): a user id in ASCII digits, else None.
    `str.isdigit()` alone lets "²" and 5000-digit numbers through to `int()`, which raises."""
    raw = raw.strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= MAX_ID_DIGITS:
        return int(raw)
    return None


def waiting_drafts() -> QuerySet[Message]:
    """Every agent draft of the current tenant that waits for review, newest first."""
    return (
        Message.objects.filter(status=Message.Status.DRAFT, sender=Message.Sender.AGENT)
        .select_related("conversation", "conversation__client")
        .order_by("-created_at", "-id")
    )


@dataclass
class QueueFilters:
    conversation: uuid.UUID | None = None
    client: int | None = None
    attention: str = ""  # "", "handoff" or "low"
    q: str = ""
    oldest_first: bool = False
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, params: Any) -> QueueFilters:
        filters = cls()
        raw_conversation = (params.get("conversation") or "").strip()
        if raw_conversation:
            try:
                filters.conversation = uuid.UUID(raw_conversation)
            except ValueError:
                filters.errors.append("That conversation id is not valid.")
        raw_client = (params.get("client") or "").strip()
        if raw_client:
            filters.client = client_id(raw_client)
            if filters.client is None:
                filters.errors.append("Choose a client from the list.")
        attention = (params.get("attention") or "").strip()
        if attention in ("handoff", "low"):
            filters.attention = attention
        elif attention:
            filters.errors.append("Choose what needs attention from the list.")
        filters.q = " ".join((params.get("q") or "").split())[:200]
        filters.oldest_first = params.get("sort") == "oldest"
        return filters

    @property
    def active(self) -> bool:
        return bool(self.conversation or self.client or self.attention or self.q)

    def as_query(self) -> dict[str, str]:
        query = {
            "conversation": str(self.conversation or ""),
            "client": str(self.client or ""),
            "attention": self.attention,
            "q": self.q,
            "sort": "oldest" if self.oldest_first else "",
        }
        return {k: v for k, v in query.items() if v}

    def apply(self, drafts: QuerySet[Message]) -> QuerySet[Message]:
        if self.errors:
            return drafts.none()
        if self.conversation:
            drafts = drafts.filter(conversation_id=self.conversation)
        if self.client:
            drafts = drafts.filter(conversation__client_id=self.client)
        runs = AgentRun.objects.filter(draft_message__isnull=False)
        if self.attention == "handoff":
            drafts = drafts.filter(id__in=runs.exclude(handoff_reason="").values("draft_message"))
        elif self.attention == "low":
            drafts = drafts.filter(id__in=runs.filter(confidence="low").values("draft_message"))
        if self.q:
            asked = runs.filter(trigger_message__body__icontains=self.q).values("draft_message")
            drafts = drafts.filter(
                Q(body__icontains=self.q)
                | Q(conversation__title__icontains=self.q)
                | Q(id__in=asked)
            )
        if self.oldest_first:
            drafts = drafts.order_by("created_at", "id")
        return drafts


@dataclass(frozen=True)
class DraftCard:
    """A draft as the consultant reviews it: the client's question beside the AI's answer."""

    message: Message
    run: AgentRun | None

    @property
    def id(self) -> uuid.UUID:
        return self.message.id

    @property
    def question(self) -> str:
        return self.run.trigger_message.body if self.run else ""

    @property
    def client_name(self) -> str:
        client = self.message.conversation.client
        return client.get_full_name() or client.email or client.get_username()

    @property
    def handoff_reason(self) -> str:
        return self.run.handoff_reason if self.run else ""

    @property
    def confidence(self) -> str:
        return self.run.confidence if self.run else ""


def draft_cards(drafts: QuerySet[Message] | list[Message]) -> list[DraftCard]:
    """Cards for these drafts, with each draft's run and question fetched in one query."""
    messages = list(drafts)
    runs = {
        run.draft_message_id: run
        for run in AgentRun.objects.filter(draft_message__in=[m.id for m in messages])
        .select_related("trigger_message")
        .only(
            "id",
            "draft_message_id",
            "confidence",
            "handoff_reason",
            "status",
            "model_name",
            "trigger_message__body",
            "trigger_message__created_at",
        )
    }
    return [DraftCard(message, runs.get(message.id)) for message in messages]
