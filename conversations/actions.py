"""Business logic for conversations. Views parse and authorize; these do the work."""

from __future__ import annotations

from django.db import transaction

from accounts.models import Membership, User
from conversations.models import Conversation, Message

STAFF_ROLES = frozenset({Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.CONSULTANT})


def sender_for_role(role: str | None) -> str:
    return Message.Sender.CLIENT if role == Membership.Role.CLIENT else Message.Sender.CONSULTANT


@transaction.atomic
def create_conversation(*, acting_user: User, client: User, title: str) -> Conversation:
    return Conversation.objects.create(client=client, title=title.strip())


@transaction.atomic
def post_message(
    *, acting_user: User, role: str | None, conversation: Conversation, body: str
) -> Message:
    message = Message.objects.create(
        conversation=conversation, sender=sender_for_role(role), author=acting_user, body=body
    )
    # Touch the conversation so lists sort by latest activity.
    conversation.save(update_fields=["updated_at"])
    return message
