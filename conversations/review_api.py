"""The consultant's review queue: every AI draft waiting for her, newest first.

    GET  /api/v1/review-queue/                     drafts (filter: ?conversation=)
    POST /api/v1/review-queue/{id}/approve/        send the draft as it is
    POST /api/v1/review-queue/{id}/edit/           {"text": ...} send her edited version
    POST /api/v1/review-queue/{id}/override/       {"text": ...} send her own answer instead
    POST /api/v1/review-queue/{id}/reject/         {"note": ...} send nothing

Each decision resumes the paused agent run; edits and overrides become corrections that
the agent retrieves for similar questions later.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from accounts.roles import TEAM
from agents.models import AgentRun
from agents.runs import ReviewError, review_draft
from conversations.models import Message
from conversations.queue import waiting_drafts
from tenants.api import TenantScopedViewSet


class DraftSerializer(serializers.ModelSerializer):
    question = serializers.SerializerMethodField()
    agent_run = serializers.SerializerMethodField()
    conversation_title = serializers.CharField(source="conversation.title", read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "conversation_title",
            "question",
            "body",
            "citations",
            "agent_run",
            "created_at",
        ]
        read_only_fields = fields

    def _run(self, message: Message) -> AgentRun | None:
        # Both fields need the run: look it up once per message.
        if not hasattr(message, "_review_run"):
            message._review_run = (  # type: ignore[attr-defined]
                AgentRun.objects.select_related("trigger_message")
                .filter(draft_message=message)
                .first()
            )
        run: AgentRun | None = message._review_run  # type: ignore[attr-defined]
        return run

    def get_question(self, message: Message) -> str:
        run = self._run(message)
        return run.trigger_message.body if run else ""

    def get_agent_run(self, message: Message) -> str | None:
        run = self._run(message)
        return str(run.id) if run else None


class DecisionSerializer(serializers.Serializer):
    text = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    note = serializers.CharField(required=False, allow_blank=True, max_length=2_000)


class ReviewQueueViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    model = Message
    serializer_class = DraftSerializer
    roles = {"*": TEAM}

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.action in ("approve", "edit", "override", "reject"):
            # Any run's draft, decided or not: deciding twice is a 409 (review_draft), not
            # a 404 as if the draft had never existed.
            drafts = AgentRun.objects.filter(draft_message__isnull=False)
            return queryset.filter(id__in=drafts.values("draft_message_id"))
        drafts = waiting_drafts()  # the dashboard's queue: same drafts, same order
        conversation = self.request.query_params.get("conversation")
        if conversation:
            try:
                drafts = drafts.filter(conversation_id=uuid.UUID(conversation))
            except ValueError:
                raise serializers.ValidationError(
                    {"conversation": ["Must be a conversation id (UUID)."]}
                ) from None
        return drafts

    def _decide(self, request: Request, decision: str) -> Response:
        message = self.get_object()
        data = DecisionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            sent = review_draft(
                message=message,
                reviewer=cast(User, request.user),
                action=decision,
                text=data.validated_data.get("text", ""),
                note=data.validated_data.get("note", ""),
            )
        except ReviewError as exc:
            return Response(
                {"code": "review_conflict", "message": str(exc)}, status=status.HTTP_409_CONFLICT
            )
        return Response(
            {"id": str(sent.id), "status": sent.status, "body": sent.body, "sender": sent.sender}
        )

    @extend_schema(request=None, responses={200: dict})
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, "approve")

    @extend_schema(request=DecisionSerializer, responses={200: dict})
    @action(detail=True, methods=["post"])
    def edit(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, "edit")

    @extend_schema(request=DecisionSerializer, responses={200: dict})
    @action(detail=True, methods=["post"])
    def override(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, "override")

    @extend_schema(request=DecisionSerializer, responses={200: dict})
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(request, "reject")
