"""REST API: who am I, partner API keys, support sessions on my tenant."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import api_keys
from accounts.models import ApiKey, SupportSession, User
from accounts.roles import ADMINS, principal_role
from tenants.api import TenantScopedViewSet
from tenants.context import current_tenant_id
from tenants.models import Tenant


class MeView(APIView):
    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        responses=inline_serializer(
            "Me",
            {
                "kind": serializers.ChoiceField(["user", "api_key"]),
                "id": serializers.CharField(),
                "name": serializers.CharField(),
                "email": serializers.CharField(allow_blank=True),
                "tenant": serializers.DictField(allow_null=True),
                "role": serializers.CharField(allow_null=True),
                "auth": serializers.CharField(allow_null=True),
            },
        )
    )
    def get(self, request: Request) -> Response:
        principal: Any = request.user
        tenant_id = current_tenant_id()
        tenant = Tenant.objects.filter(id=tenant_id).first() if tenant_id else None
        body: dict[str, Any] = {
            "kind": "api_key" if getattr(principal, "actor_type", "") == "api_key" else "user",
            "id": str(principal.pk),
            "name": principal.get_full_name() if isinstance(principal, User) else str(principal),
            "email": principal.email if isinstance(principal, User) else "",
            "tenant": {"id": str(tenant.id), "slug": tenant.slug, "name": tenant.name}
            if tenant and getattr(principal, "tenant_id", None) == tenant.id
            else None,
            "role": principal_role(principal) if tenant else None,
            "auth": getattr(request._request, "auth_method", None) or "session",
        }
        if body["kind"] == "api_key":
            body["scope"] = principal.scope
        return Response(body)


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scope",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "is_active",
        ]
        read_only_fields = ["id", "prefix", "created_at", "revoked_at", "last_used_at"]

    is_active = serializers.BooleanField(read_only=True)
    name = serializers.CharField(max_length=100, trim_whitespace=True)

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Choose a time in the future.")
        return value


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """Partner API keys of your tenant (owners and admins). The key itself is in the
    response to `create` and nowhere else; `DELETE` revokes it."""

    model = ApiKey
    serializer_class = ApiKeySerializer
    roles = {"*": ADMINS}

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = api_keys.issue_api_key(
            acting_user=request.user,  # type: ignore[arg-type]
            name=serializer.validated_data["name"],
            scope=serializer.validated_data.get("scope", ApiKey.Scope.READ),
            expires_at=serializer.validated_data.get("expires_at"),
        )
        body = {**ApiKeySerializer(issued.api_key).data, "key": issued.plaintext}
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiKey) -> None:
        api_keys.revoke_api_key(acting_user=self.request.user, api_key=instance)


class SupportSessionSerializer(serializers.ModelSerializer):
    staff = serializers.CharField(source="staff_username", read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = SupportSession
        fields = ["id", "staff", "reason", "created_at", "expires_at", "ended_at", "is_active"]
        read_only_fields = fields


class SupportSessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Every support session opened on your tenant (owners and admins)."""

    model = SupportSession
    serializer_class = SupportSessionSerializer
    roles = {"*": ADMINS}

    def safely_get_queryset(self, queryset: Any) -> Any:
        return queryset
