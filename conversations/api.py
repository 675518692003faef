"""REST API: /api/v1/conversations/ and /api/v1/conversations/{id}/messages/."""

from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Membership, User
from accounts.roles import API_KEY, CLIENT, MEMBERS
from agents.models import AgentRun
from conversations import actions
from conversations.models import Conversation, Message
from tenants.api import TenantScopedViewSet


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "sender",
            "author",
            "body",
            "status",
            "citations",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "conversation",
            "sender",
            "author",
            "status",
            "citations",
            "created_at",
        ]

    body = serializers.CharField(max_length=20_000, trim_whitespace=True)


class PostedMessageSerializer(MessageSerializer):
    """The answer to posting a message: the message, and the agent run it started (a
    client's message) or null."""

    agent_run = serializers.UUIDField(allow_null=True, read_only=True)

    class Meta(MessageSerializer.Meta):
        fields = [*MessageSerializer.Meta.fields, "agent_run"]
        read_only_fields = [*MessageSerializer.Meta.read_only_fields, "agent_run"]


class TenantClientField(serializers.PrimaryKeyRelatedField):
    """A client of the current tenant (evaluated at validation time, inside the tenant)."""

    def get_queryset(self) -> QuerySet[User]:
        return User.objects.filter(
            memberships__in=Membership.objects.filter(role=Membership.Role.CLIENT)
        )


class ConversationSerializer(serializers.ModelSerializer):
    client = TenantClientField(
        queryset=User.objects.none(),
        required=False,
        help_text="A client of your tenant (team and API keys; clients always open their own).",
    )

    class Meta:
        model = Conversation
        fields = ["id", "title", "status", "client", "created_at", "updated_at"]
        read_only_fields = ["id", "status", "created_at", "updated_at"]


class ConversationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    TenantScopedViewSet,
):
    model = Conversation
    serializer_class = ConversationSerializer
    roles = {"*": MEMBERS | {API_KEY}}

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.role == CLIENT:
            # A client sees only her own conversations; the team and API keys see all.
            return queryset.filter(client_id=self.request.user.pk)
        return queryset

    def acting_user(self) -> User | None:
        user = self.request.user
        return cast(User, user) if isinstance(user, User) else None

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        client = serializer.validated_data.get("client")
        if self.role == CLIENT:
            client = self.acting_user()
        elif client is None:
            raise serializers.ValidationError({"client": ["Choose the client to talk to."]})
        serializer.instance = actions.create_conversation(
            acting_user=self.request.user, client=client, title=serializer.validated_data["title"]
        )

    @extend_schema(methods=["GET"], responses=MessageSerializer(many=True))
    @extend_schema(methods=["POST"], responses={201: PostedMessageSerializer})
    @action(detail=True, methods=["get", "post"], serializer_class=MessageSerializer)
    def messages(self, request: Request, pk: str | None = None) -> Response:
        conversation = self.get_object()
        if request.method == "GET":
            messages = conversation.messages.all()
            if self.role == CLIENT:  # drafts and rejected drafts are the consultant's
                messages = messages.filter(status=Message.Status.SENT)
            page = self.paginate_queryset(messages)
            return self.get_paginated_response(MessageSerializer(page, many=True).data)
        serializer = MessageSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message = actions.post_message(
            acting_user=request.user,
            role=self.role,
            conversation=conversation,
            body=serializer.validated_data["body"],
        )
        run = AgentRun.objects.filter(trigger_message=message).values_list("id", flat=True).first()
        body = {**MessageSerializer(message).data, "agent_run": str(run) if run else None}
        return Response(body, status=status.HTTP_201_CREATED)
