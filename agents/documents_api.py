"""REST API: /api/v1/documents/ — the tenant's playbook.

Upload (`POST`, multipart: `file`, optional `title`), list, retrieve, delete, and
`POST /api/v1/documents/{id}/reingest/` (optionally with a new `file`: a changed version).
Uploading stores the bytes in the database (under RLS) and queues `agents.ingest_document`
once the request's transaction has committed; `progress` is live while it runs.

The team and API keys read; the team and write-scoped keys upload and re-ingest; only the
team deletes. Clients never see the playbook itself (they see what the agent cites).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, NoReturn

from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from accounts.roles import API_KEY, TEAM
from agents import tasks
from agents.corpus import SUPPORTED_DESCRIPTION, IngestionError, detect_content_type
from agents.models import Document
from audit.actions import record_audit_event
from config.api_errors import error_body
from tenants.api import TenantScopedViewSet

LIVE_STATUSES = (Document.Status.PENDING, Document.Status.PROCESSING)


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
        if document.status in LIVE_STATUSES:
            live = tasks.live_progress(document.id)
            if live is not None:
                return live
        return document.progress


class DocumentUploadSerializer(serializers.Serializer):
    """The multipart form of an upload (for the schema; the view validates the file)."""

    file = serializers.FileField(help_text=f"The document: {SUPPORTED_DESCRIPTION}.")
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)


class DocumentReingestSerializer(serializers.Serializer):
    file = serializers.FileField(
        required=False, help_text="A changed version of the document (optional)."
    )
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes
    sha256: str


class UploadRefused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _refuse(code: str, message: str, http_status: int = status.HTTP_400_BAD_REQUEST) -> NoReturn:
    raise UploadRefused(
        Response(error_body(code, message, fields={"file": [message]}), status=http_status)
    )


def _clean_filename(name: str) -> str:
    base = PurePath((name or "").replace("\\", "/")).name.strip()
    return "".join(ch for ch in base if ch.isprintable())[:255] or "document"


def read_upload(request: Request, *, required: bool = True) -> Upload | None:
    """The uploaded `file`, checked: present, not empty, not too large, a supported type.
    Raises UploadRefused with the 400/413 response otherwise."""
    upload = request.FILES.get("file") if hasattr(request, "FILES") else None
    if upload is None:
        if required or "file" in request.data:
            _refuse(
                "invalid",
                "Choose a file to upload (multipart form field “file”).",
            )
        return None
    if not isinstance(upload, UploadedFile):
        _refuse("invalid", "Send the document as a file (multipart form field “file”).")
    filename = _clean_filename(upload.name or "")
    limit = int(settings.PLAYBOOK_MAX_UPLOAD_BYTES)
    if upload.size is not None and upload.size > limit:
        _refuse(
            "too_large",
            f"“{filename}” is {upload.size:,} bytes; the limit is {limit:,} bytes.",
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if not upload.size:
        _refuse("invalid", f"“{filename}” is empty.")
    try:
        content_type = detect_content_type(filename, upload.content_type)
    except IngestionError as exc:
        _refuse("unsupported_type", str(exc))
    data = upload.read(limit + 1)
    if len(data) > limit:  # the declared size lied
        _refuse(
            "too_large",
            f"“{filename}” is larger than the limit of {limit:,} bytes.",
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if not data:
        _refuse("invalid", f"“{filename}” is empty.")
    return Upload(filename, content_type, data, hashlib.sha256(data).hexdigest())


def _title(request: Request, default: str) -> str:
    raw = request.data.get("title")
    title = " ".join(str(raw).split()) if isinstance(raw, str) else ""
    return (title or default)[:200]


def _default_title(filename: str) -> str:
    stem = PurePath(filename).stem.replace("_", " ").replace("-", " ")
    return " ".join(stem.split()) or filename


def enqueue_ingestion(document: Document, tenant_id: str) -> None:
    """Queue the ingestion once the current transaction commits (never for a rolled-back
    upload, and the worker is sure to find the row)."""
    document_id = str(document.id)
    tasks.set_live_progress(document_id, 0)
    transaction.on_commit(lambda: tasks.ingest_document.delay(document_id, tenant_id=tenant_id))


class DocumentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    TenantScopedViewSet,
):
    """The tenant's playbook documents."""

    model = Document
    serializer_class = DocumentSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
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

    def _acting_user(self) -> User | None:
        user = self.request.user
        return user if isinstance(user, User) else None

    @extend_schema(
        request={"multipart/form-data": DocumentUploadSerializer},
        responses={201: DocumentSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            upload = read_upload(request)
        except UploadRefused as refused:
            return refused.response
        if upload is None:  # required=True: read_upload refuses instead
            raise AssertionError("no upload")
        document = Document.objects.create(
            title=_title(request, _default_title(upload.filename)),
            filename=upload.filename,
            content_type=upload.content_type,
            size=len(upload.data),
            sha256=upload.sha256,
            source=upload.data,
            created_by=self._acting_user(),
        )
        record_audit_event(
            "document.uploaded",
            actor=request.user,
            resource_type="document",
            resource_id=document.id,
            context={
                "filename": document.filename,
                "content_type": document.content_type,
                "size": document.size,
                "sha256": document.sha256,
            },
        )
        enqueue_ingestion(document, str(self.tenant_id))
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
        except UploadRefused as refused:
            return refused.response
        fields = ["status", "progress", "error", "updated_at"]
        context: dict[str, Any] = {"filename": document.filename, "new_version": False}
        if upload is not None:
            document.filename = upload.filename
            document.content_type = upload.content_type
            document.size = len(upload.data)
            document.sha256 = upload.sha256
            document.source = upload.data
            fields += ["filename", "content_type", "size", "sha256", "source"]
            context.update(
                filename=upload.filename,
                new_version=True,
                size=document.size,
                sha256=document.sha256,
            )
        title = _title(request, document.title)
        if title != document.title:
            document.title = title
            fields.append("title")
        document.status = Document.Status.PENDING
        document.progress = 0
        document.error = ""
        document.save(update_fields=fields)
        record_audit_event(
            "document.reingest_requested",
            actor=request.user,
            resource_type="document",
            resource_id=document.id,
            context=context,
        )
        enqueue_ingestion(document, str(self.tenant_id))
        return Response(DocumentSerializer(document).data, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance: Document) -> None:
        record_audit_event(
            "document.deleted",
            actor=self.request.user,
            resource_type="document",
            resource_id=instance.id,
            context={"filename": instance.filename, "chunks": instance.chunk_count},
        )
        document_id = instance.id
        instance.delete()
        transaction.on_commit(lambda: cache.delete(tasks.progress_key(document_id)))
