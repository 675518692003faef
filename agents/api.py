"""REST API: agent runs (status and output), the entitlement registry."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.db.models import QuerySet
from rest_framework import mixins, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.roles import ADMINS, API_KEY, CLIENT, MEMBERS, TEAM
from agents import registry
from agents.entitlements import (
    check_within_plan,
    destination_refusal,
    entitlement_errors,
    record_entitlement_change,
    remove_entitlement,
)
from agents.models import AgentRun, TenantEntitlement
from agents.runs import live_key
from config.api_errors import error_body
from conversations.models import Message
from tenants.api import TenantScopedViewSet
from tenants.outbound import OutboundRefused


class AgentRunSerializer(serializers.ModelSerializer):
    output = serializers.SerializerMethodField()
    message = serializers.SerializerMethodField()

    class Meta:
        model = AgentRun
        fields = [
            "id",
            "conversation",
            "trigger_message",
            "status",
            "model_name",
            "output",
            "message",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def _visible(self, run: AgentRun) -> bool:
        # A client sees the answer only once it was sent to her (not the draft).
        if self.context.get("role") != CLIENT:
            return True
        draft = run.draft_message
        return draft is not None and draft.status == Message.Status.SENT

    def get_output(self, run: AgentRun) -> str:
        if run.status == AgentRun.Status.RUNNING:
            live = cache.get(live_key(run.id)) or {}
            return str(live.get("output", "")) if self.context.get("role") != CLIENT else ""
        if not self._visible(run):
            return ""
        return run.draft_message.body if run.draft_message else run.output

    def get_message(self, run: AgentRun) -> str | None:
        return str(run.draft_message_id) if run.draft_message_id and self._visible(run) else None


class AgentRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Agent runs: `queued` → `running` → `awaiting_review` (a draft is in the review queue)
    → `completed` (or `failed`). A client sees only her own conversations' runs, and the
    answer only once it was sent to her."""

    model = AgentRun
    serializer_class = AgentRunSerializer
    roles = {"*": MEMBERS | {API_KEY}}

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        queryset = queryset.select_related("draft_message")
        if self.role == CLIENT:
            queryset = queryset.filter(conversation__client_id=self.request.user.pk)
        return queryset

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "role": self.role}


class TenantEntitlementSerializer(serializers.ModelSerializer):
    within_plan = serializers.SerializerMethodField(
        help_text="False for a grant beyond your plan (and any override Playbook support made "
        "for you): it has no effect until the plan allows it."
    )

    class Meta:
        model = TenantEntitlement
        fields = ["id", "kind", "name", "effect", "config", "within_plan", "updated_at"]
        read_only_fields = ["id", "within_plan", "updated_at"]

    def get_within_plan(self, row: TenantEntitlement) -> bool:
        if row.effect == TenantEntitlement.Effect.REVOKE:
            return True
        # The registry's judgement; the ceiling is read once per response (a list shares
        # its root's context).
        ceiling: registry.Ceiling | None = self.context.get("ceiling")
        if ceiling is None:
            ceiling = self.context["ceiling"] = registry.ceiling_for(registry.current_tenant())
        merged = {**registry.plan_defaults(ceiling.plan, row.kind, row.name), **row.config}
        return ceiling.admits(row.kind, row.name, merged)

    def validate_config(self, value: Any) -> Any:
        # A form-encoded "null" is parsed to None after DRF's own null check (which only
        # sees JSON's null): refuse it here, the column is NOT NULL.
        if not isinstance(value, dict):  # also true, 3, "x" or a list: always an object
            raise serializers.ValidationError("Must be a JSON object.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        kind = attrs.get("kind", getattr(self.instance, "kind", None))
        name = attrs.get("name", getattr(self.instance, "name", None))
        effect = attrs.get("effect", getattr(self.instance, "effect", "grant"))
        config = attrs.get("config", getattr(self.instance, "config", {})) or {}
        errors = entitlement_errors(
            kind,
            name,
            effect,
            config,
            exclude_pk=self.instance.pk if self.instance is not None else None,
        )
        if errors:
            raise serializers.ValidationError(errors)
        # The plan is a ceiling: beyond it, a 403 `not_in_plan` (config.api_errors).
        check_within_plan(kind, name, effect, config)
        previous = self.instance.config if self.instance is not None else None
        refused = destination_refusal(kind, name, effect, config, previous=previous)
        if refused is not None:
            raise refused  # EntitlementViewSet answers 400 with the refusal's own code
        return attrs


def refused_destination_response(refused: OutboundRefused) -> Response:
    """400 with the refusal's stable code (private_address, port_not_allowed, ...)."""
    return Response(
        error_body(refused.code, refused.message, fields={"config": [refused.message]}),
        status=status.HTTP_400_BAD_REQUEST,
    )


class EntitlementViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """Your tenant's own entitlement rows (grants with config, or revokes of plan defaults).
    Changes take effect at once: the resolved registry is invalidated. The plan is a
    ceiling: a grant of a tool or model your plan does not include is refused with 403
    `not_in_plan` (Playbook support can make an exception)."""

    model = TenantEntitlement
    serializer_class = TenantEntitlementSerializer
    roles = {"list": TEAM, "retrieve": TEAM, "*": ADMINS}

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().create(request, *args, **kwargs)
        except OutboundRefused as refused:
            return refused_destination_response(refused)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().update(request, *args, **kwargs)
        except OutboundRefused as refused:
            return refused_destination_response(refused)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        record_entitlement_change(self.request.user, serializer.save())

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        record_entitlement_change(self.request.user, serializer.save())

    def perform_destroy(self, instance: TenantEntitlement) -> None:
        remove_entitlement(acting_user=self.request.user, row=instance)


class ResolvedRegistrySerializer(serializers.Serializer):
    tenant_id = serializers.CharField()
    plan = serializers.CharField()
    tools = serializers.DictField(child=serializers.DictField())
    models = serializers.DictField(child=serializers.DictField())
    prompts = serializers.DictField(child=serializers.DictField())
    data_sources = serializers.DictField(child=serializers.DictField())


class RegistryViewSet(TenantScopedViewSet):
    model = TenantEntitlement
    serializer_class = ResolvedRegistrySerializer
    roles = {"*": TEAM | {API_KEY}}

    def resolved(self, request: Request) -> Response:
        """The tools, models, prompts and data sources your agent may use (plan defaults
        with your tenant's grants and revokes applied)."""
        data = registry.resolve().as_dict()
        return Response(data)
