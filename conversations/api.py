"""REST API: /api/v1/conversations/ and /api/v1/conversations/{id}/messages/."""

from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Membership, User, role_in_current_tenant
from conversations import actions
from conversations.models import Conversation, Message
from tenants.api import TenantScopedViewSet


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "conversation", "sender", "author", "body", "created_at"]
        read_only_fields = ["id", "conversation", "sender", "author", "created_at"]

    body = serializers.CharField(max_length=20_000, trim_whitespace=True)


class ConversationSerializer(serializers.ModelSerializer):
    client = serializers.PrimaryKeyRelatedField(
        queryset=User.objects.none(),
        required=False,
        help_text="A client of your tenant (staff only; clients always open their own).",
    )

    class Meta:
        model = Conversation
        fields = ["id", "title", "status", "client", "created_at", "updated_at"]
        read_only_fields = ["id", "status", "created_at", "updated_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only clients of this tenant are valid targets; the membership table is under RLS.
        client_field: Any = self.fields["client"]
        client_field.queryset = User.objects.filter(
            memberships__in=Membership.objects.filter(role=Membership.Role.CLIENT)
        )


class ConversationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    TenantScopedViewSet,
):
    model = Conversation
    serializer_class = ConversationSerializer

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.role == Membership.Role.CLIENT:
            # A client sees only her own conversations (issue 3 builds roles out fully).
            return queryset.filter(client=self.request.user)
        if self.role is None:
            return queryset.none()
        return queryset

    @property
    def acting_user(self) -> User:
        return cast(User, self.request.user)

    @property
    def role(self) -> str | None:
        if not hasattr(self, "_role"):
            self._role = role_in_current_tenant(self.request.user)  # type: ignore[arg-type]
        return self._role

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        user = self.acting_user
        if self.role is None:
            raise serializers.ValidationError("Only members of this tenant can open conversations.")
        client = serializer.validated_data.get("client")
        if self.role == Membership.Role.CLIENT or client is None:
            if self.role != Membership.Role.CLIENT:
                raise serializers.ValidationError({"client": ["Choose the client to talk to."]})
            client = user
        serializer.instance = actions.create_conversation(
            acting_user=user, client=client, title=serializer.validated_data["title"]
        )

    @action(detail=True, methods=["get", "post"], serializer_class=MessageSerializer)
    def messages(self, request: Request, pk: str | None = None) -> Response:
        conversation = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(conversation.messages.all())
            return self.get_paginated_response(MessageSerializer(page, many=True).data)
        serializer = MessageSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message = actions.post_message(
            acting_user=self.acting_user,
            role=self.role,
            conversation=conversation,
            body=serializer.validated_data["body"],
        )
        return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)
