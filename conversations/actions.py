"""Business logic for conversations. Views parse and authorize; these do the work and
write the audit event in the same transaction."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from accounts.models import User
from accounts.roles import CLIENT
from audit.actions import record_audit_event
from conversations.models import Conversation, Message


def sender_for_role(role: str | None) -> str:
    return Message.Sender.CLIENT if role == CLIENT else Message.Sender.CONSULTANT


def _author(acting_user: Any) -> User | None:
    return acting_user if isinstance(acting_user, User) else None


@transaction.atomic
def create_conversation(*, acting_user: Any, client: User, title: str) -> Conversation:
    conversation = Conversation.objects.create(client=client, title=title.strip())
    record_audit_event(
        "conversation.created",
        actor=acting_user,
        resource_type="conversation",
        resource_id=conversation.id,
    )
    return conversation


@transaction.atomic
def post_message(
    *,
    acting_user: Any,
    role: str | None,
    conversation: Conversation,
    body: str,
    start_agent: bool = True,
) -> Message:
    """A message in a conversation. A client's message starts an agent run, whose answer
    goes to the review queue or straight back, per the tenant's review policy. Before it is
    saved, the limiter admits it (raises RateLimited, HardCapReached, LimiterUnavailable)."""
    starts_run = sender_for_role(role) == Message.Sender.CLIENT and start_agent
    if starts_run:
        from billing.limiter import check_request

        check_request(user_id=getattr(acting_user, "pk", None))
    message = Message.objects.create(
        conversation=conversation,
        sender=sender_for_role(role),
        author=_author(acting_user),
        body=body,
    )
    # Touch the conversation so lists sort by latest activity.
    conversation.save(update_fields=["updated_at"])
    record_audit_event(
        "message.posted",
        actor=acting_user,
        resource_type="message",
        resource_id=message.id,
        context={"conversation": str(conversation.id)},
    )
    if starts_run:
        from agents.runs import start_agent_run

        start_agent_run(conversation=conversation, trigger=message, requested_by=acting_user)
    return message
