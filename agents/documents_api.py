"""REST API: /api/v1/documents/ — the tenant's playbook.

Upload (`POST`, multipart: `file`, optional `title`), list, retrieve, delete, and
`POST /api/v1/documents/{id}/reingest/` (optionally with a new `file`: a changed version).
Uploading stores the bytes in the database (under RLS) and queues `agents.ingest_document`
once the request's transaction has committed; `progress` is live while it runs.

The team and API keys read; the team and write-scoped keys upload and re-ingest; only the
team deletes. Clients never see the playbook itself (they see what the agent cites).
"""

from __future__ import annotations

from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.roles import API_KEY, TEAM
from agents.corpus import SUPPORTED_DESCRIPTION
from agents.documents import (
    Upload,
    UploadRejected,
    add_document,
    check_upload,
    delete_document,
    document_progress,
    reingest_document,
)
from agents.models import Document
from config.api_errors import error_body
from tenants.api import TenantScopedViewSet
from tenants.inputs import GuardedJSONParser


class DocumentSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField(
        help_text="0 to 100; live while the document is waiting or being processed."
    )

    class Meta:
        model = Document
        fields = [
            "id",
            "title",
            "filename",
            "content_type",
            "size",
            "status",
            "progress",
            "error",
            "chunk_count",
            "embedding_model",
            "created_at",
            "ingested_at",
        ]
        read_only_fields = fields

    def get_progress(self, document: Document) -> int:
        return document_progress(document)


class DocumentUploadSerializer(serializers.Serializer):
    """The multipart form of an upload (for the schema; the view validates the file)."""

    file = serializers.FileField(help_text=f"The document: {SUPPORTED_DESCRIPTION}.")
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)


class DocumentReingestSerializer(serializers.Serializer):
    file = serializers.FileField(
        required=False, help_text="A changed version of the document (optional)."
    )
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)


def read_upload(request: Request, *, required: bool = True) -> Upload | None:
    """The uploaded `file`, checked (agents.documents.check_upload). Raises UploadRejected."""
    upload = request.FILES.get("file") if hasattr(request, "FILES") else None
    if upload is None:
        if required or "file" in request.data:
            raise UploadRejected(
                "invalid", "Choose a file to upload (multipart form field “file”)."
            )
        return None
    if not isinstance(upload, UploadedFile):
        raise UploadRejected(
            "invalid", "Send the document as a file (multipart form field “file”)."
        )
    return check_upload(upload)


def rejected_response(rejected: UploadRejected) -> Response:
    return Response(
        error_body(rejected.code, rejected.message, fields={"file": [rejected.message]}),
        status=rejected.status,
    )


class DocumentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """The tenant's playbook documents."""

    model = Document
    serializer_class = DocumentSerializer
    parser_classes = [MultiPartParser, FormParser, GuardedJSONParser]
    roles = {
        "list": TEAM | {API_KEY},
        "retrieve": TEAM | {API_KEY},
        "create": TEAM | {API_KEY},  # API keys: write scope only (RolePermission)
        "reingest": TEAM | {API_KEY},
        "destroy": TEAM,
        "*": TEAM,
    }

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.defer("source")

    @extend_schema(
        request={"multipart/form-data": DocumentUploadSerializer},
        responses={201: DocumentSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            upload = read_upload(request)
        except UploadRejected as rejected:
            return rejected_response(rejected)
        if upload is None:  # required=True: read_upload refuses instead
            raise AssertionError("no upload")
        document = add_document(
            acting_user=request.user, upload=upload, title=request.data.get("title")
        )
        return Response(DocumentSerializer(document).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request={"multipart/form-data": DocumentReingestSerializer},
        responses={202: DocumentSerializer},
    )
    @action(detail=True, methods=["post"], serializer_class=DocumentSerializer)
    def reingest(self, request: Request, pk: str | None = None) -> Response:
        """Ingest the document again, optionally from a changed version (`file`). The
        document is out of search until it is ready again; its chunks are replaced only when
        the new ones are complete (a failed ingestion leaves the previous ones in place)."""
        document = self.get_object()
        try:
            upload = read_upload(request, required=False)
        except UploadRejected as rejected:
            return rejected_response(rejected)
        document = reingest_document(
            acting_user=request.user,
            document=document,
            upload=upload,
            title=request.data.get("title"),
        )
        return Response(DocumentSerializer(document).data, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance: Document) -> None:
        delete_document(acting_user=self.request.user, document=instance)
