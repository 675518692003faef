"""REST API of tenant credentials (owners and admins): write-only secrets.

    GET    /api/v1/credentials/               name, kind, metadata, last four characters
    POST   /api/v1/credentials/               {"name", "kind", "secret", "metadata"}
    POST   /api/v1/credentials/{id}/rotate/   {"secret"}
    DELETE /api/v1/credentials/{id}/

The secret is accepted and never returned, logged or audited.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.roles import ADMINS
from tenants.api import TenantScopedViewSet
from tenants.models import Credential
from tenants.vault import service

METADATA_KEYS = {"base_url", "account_id", "username", "url", "region", "description"}


class CredentialSerializer(serializers.ModelSerializer):
    secret = serializers.CharField(
        write_only=True,
        trim_whitespace=True,
        max_length=8192,
        style={"input_type": "password"},
        help_text="Accepted once; never returned. Only the last four characters are shown.",
    )

    class Meta:
        model = Credential
        fields = [
            "id",
            "name",
            "kind",
            "metadata",
            "secret",
            "last_four",
            "created_at",
            "last_used_at",
            "rotated_at",
        ]
        read_only_fields = ["id", "last_four", "created_at", "last_used_at", "rotated_at"]

    def validate_metadata(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        unknown = set(value) - METADATA_KEYS
        if unknown:
            # Metadata is stored in clear: keep secrets out of it by allowing known keys only.
            raise serializers.ValidationError(
                f"Unknown keys {sorted(unknown)}; allowed: {sorted(METADATA_KEYS)}."
            )
        return value

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if Credential.objects.filter(name=value).exists():
            raise serializers.ValidationError("A credential with this name exists; rotate it.")
        return value


class RotateSerializer(serializers.Serializer):
    secret = serializers.CharField(write_only=True, max_length=8192, trim_whitespace=True)


class CredentialViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    model = Credential
    serializer_class = CredentialSerializer
    roles = {"*": ADMINS}

    def safely_get_queryset(self, queryset: Any) -> Any:
        return queryset.defer("ciphertext", "nonce")

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = service.create_credential(
            acting_user=self.request.user,
            name=data["name"],
            kind=data["kind"],
            secret=data["secret"],
            metadata=data.get("metadata") or {},
        )

    @extend_schema(request=RotateSerializer, responses={200: CredentialSerializer})
    @action(detail=True, methods=["post"], serializer_class=RotateSerializer)
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        credential = self.get_object()
        data = RotateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        service.rotate_credential(
            acting_user=request.user, credential=credential, secret=data.validated_data["secret"]
        )
        return Response(CredentialSerializer(credential).data, status=status.HTTP_200_OK)

    def perform_destroy(self, instance: Credential) -> None:
        service.delete_credential(acting_user=self.request.user, credential=instance)
