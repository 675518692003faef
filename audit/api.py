"""REST API of the audit log (tenant owners and admins): events, signed export, public key."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers
from rest_framework.request import Request

from accounts.roles import ADMINS
from audit import signing
from audit.actions import record_audit_event
from audit.export import create_checkpoint, iter_export
from audit.models import AuditEvent
from tenants.api import TenantScopedViewSet
from tenants.context import current_principal, tenant_context
from tenants.inputs import GuardedCursorPagination


class AuditEventSerializer(serializers.ModelSerializer):
    is_support_access = serializers.BooleanField(read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "seq",
            "created_at",
            "actor_type",
            "actor_id",
            "actor_label",
            "action",
            "resource_type",
            "resource_id",
            "request_id",
            "agent_run_id",
            "ip",
            "user_agent",
            "payload_sha256",
            "context",
            "prev_hash",
            "hash",
            "is_support_access",
        ]
        read_only_fields = fields


class AuditFilterSerializer(serializers.Serializer):
    actor_type = serializers.ChoiceField(AuditEvent.ActorType.choices, required=False)
    actor_id = serializers.CharField(required=False, max_length=64)
    action = serializers.CharField(required=False, max_length=64)
    resource_type = serializers.CharField(required=False, max_length=64)
    resource_id = serializers.CharField(required=False, max_length=64)
    support = serializers.BooleanField(required=False, help_text="Only support-staff access.")
    # `from` is a Python keyword: exposed as "from", read as `start`.
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)

    def to_internal_value(self, data: Any) -> Any:
        data = {**{k: v for k, v in data.items()}}
        if "from" in data:
            data["start"] = data.pop("from")
        if "to" in data:
            data["end"] = data.pop("to")
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("start") and attrs.get("end") and attrs["start"] >= attrs["end"]:
            raise serializers.ValidationError({"from": ["Must be before 'to'."]})
        return attrs


FILTER_PARAMETERS = [
    OpenApiParameter("actor_type", str, enum=AuditEvent.ActorType.values),
    OpenApiParameter("actor_id", str),
    OpenApiParameter("action", str),
    OpenApiParameter("resource_type", str),
    OpenApiParameter("resource_id", str),
    OpenApiParameter("support", bool, description="Only support-staff access."),
    OpenApiParameter("from", OpenApiTypes.DATETIME, description="At or after (ISO 8601)."),
    OpenApiParameter("to", OpenApiTypes.DATETIME, description="Before (ISO 8601)."),
]


class NewestFirst(GuardedCursorPagination):
    ordering = "-seq"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


@extend_schema(parameters=FILTER_PARAMETERS)
class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Your tenant's audit log, newest first. Support-staff access is marked
    `is_support_access` (filter with `?support=true`)."""

    model = AuditEvent
    serializer_class = AuditEventSerializer
    pagination_class = NewestFirst
    roles = {"*": ADMINS}

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.action != "list":
            return queryset
        filters = AuditFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        for field in ("actor_type", "actor_id", "action", "resource_type", "resource_id"):
            if field in data:
                queryset = queryset.filter(**{field: data[field]})
        if data.get("support") is not None:
            support = AuditEvent.ActorType.SUPPORT
            queryset = (
                queryset.filter(actor_type=support)
                if data["support"]
                else queryset.exclude(actor_type=support)
            )
        if "start" in data:
            queryset = queryset.filter(created_at__gte=data["start"])
        if "end" in data:
            queryset = queryset.filter(created_at__lt=data["end"])
        return queryset


class AuditExportViewSet(TenantScopedViewSet):
    model = AuditEvent
    roles = {"*": ADMINS}

    @extend_schema(
        parameters=FILTER_PARAMETERS[-2:],
        responses={(200, "application/x-ndjson"): OpenApiTypes.BINARY},
        description='JSON Lines, one event per line, then a line {"manifest": {...}} signed '
        "with the key at /.well-known/playbook-audit-key. Verify offline with "
        "audit/verify_export.py.",
    )
    def export(self, request: Request) -> StreamingHttpResponse:
        filters = AuditFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        start, end = filters.validated_data.get("start"), filters.validated_data.get("end")
        record_audit_event(
            "audit.exported",
            actor=request.user,
            resource_type="audit_log",
            context={
                "from": start.isoformat() if start else "",
                "to": end.isoformat() if end else "",
            },
        )
        create_checkpoint()
        tenant_id, principal = self.tenant_id, current_principal()

        def stream() -> Any:
            # Runs after the view returned, outside the request's transaction: enter again.
            with tenant_context(tenant_id, principal=principal):
                yield from iter_export(start, end)

        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response = StreamingHttpResponse(stream(), content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.jsonl"'
        response["Cache-Control"] = "no-store"
        return response


@require_GET
@cache_control(public=True, max_age=3600)
def public_key(request: HttpRequest) -> JsonResponse:
    """The platform's audit-signing public key(s), as a JWK set."""
    return JsonResponse(signing.public_jwks())
