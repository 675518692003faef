"""Playbook documents: checking an upload, storing it, re-ingesting and deleting it.

The API (`agents.documents_api`) and the dashboard (`agents.views`) parse their requests and
call these; each writes its audit event in the caller's transaction and queues ingestion only
once that transaction commits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from accounts.models import User
from agents import tasks
from agents.corpus import IngestionError, detect_content_type
from agents.models import Document
from audit.actions import record_audit_event
from tenants.context import require_tenant_id

LIVE_STATUSES = (Document.Status.PENDING, Document.Status.PROCESSING)


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes
    sha256: str


class UploadRejected(Exception):
    """An upload that is not stored: `code` is the API's stable error code."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def clean_filename(name: str) -> str:
    base = PurePath((name or "").replace("\\", "/")).name.strip()
    return "".join(ch for ch in base if ch.isprintable())[:255] or "document"


def default_title(filename: str) -> str:
    stem = PurePath(filename).stem.replace("_", " ").replace("-", " ")
    return " ".join(stem.split()) or filename


def clean_title(raw: Any, default: str) -> str:
    title = " ".join(str(raw).split()) if isinstance(raw, str) else ""
    return (title or default)[:200]


def check_upload(upload: UploadedFile) -> Upload:
    """The uploaded file, checked: not empty, not too large, a supported type."""
    filename = clean_filename(upload.name or "")
    limit = int(settings.PLAYBOOK_MAX_UPLOAD_BYTES)
    if upload.size is not None and upload.size > limit:
        raise UploadRejected(
            "too_large",
            f"“{filename}” is {upload.size:,} bytes; the limit is {limit:,} bytes.",
            413,
        )
    if not upload.size:
        raise UploadRejected("invalid", f"“{filename}” is empty.")
    try:
        content_type = detect_content_type(filename, upload.content_type)
    except IngestionError as exc:
        raise UploadRejected("unsupported_type", str(exc)) from None
    data = upload.read(limit + 1)
    if len(data) > limit:  # the declared size lied
        raise UploadRejected(
            "too_large", f"“{filename}” is larger than the limit of {limit:,} bytes.", 413
        )
    if not data:
        raise UploadRejected("invalid", f"“{filename}” is empty.")
    return Upload(filename, content_type, data, hashlib.sha256(data).hexdigest())


def document_progress(document: Document) -> int:
    """0 to 100; live (from Redis) while the document waits or is being processed."""
    if document.status in LIVE_STATUSES:
        live = tasks.live_progress(document.id)
        if live is not None:
            return live
    return document.progress


def _enqueue_ingestion(document: Document) -> None:
    """Queue the ingestion once the current transaction commits (never for a rolled-back
    upload, and the worker is sure to find the row)."""
    document_id, tenant_id = str(document.id), str(require_tenant_id())
    tasks.set_live_progress(document_id, 0)
    transaction.on_commit(lambda: tasks.ingest_document.delay(document_id, tenant_id=tenant_id))


@transaction.atomic
def add_document(*, acting_user: Any, upload: Upload, title: Any = "") -> Document:
    document = Document.objects.create(
        title=clean_title(title, default_title(upload.filename)),
        filename=upload.filename,
        content_type=upload.content_type,
        size=len(upload.data),
        sha256=upload.sha256,
        source=upload.data,
        created_by=acting_user if isinstance(acting_user, User) else None,
    )
    record_audit_event(
        "document.uploaded",
        actor=acting_user,
        resource_type="document",
        resource_id=document.id,
        context={
            "filename": document.filename,
            "content_type": document.content_type,
            "size": document.size,
            "sha256": document.sha256,
        },
    )
    _enqueue_ingestion(document)
    return document


@transaction.atomic
def reingest_document(
    *, acting_user: Any, document: Document, upload: Upload | None = None, title: Any = None
) -> Document:
    """Ingest the document again, optionally from a changed version. Its chunks are replaced
    only when the new ones are complete (a failed ingestion leaves the previous ones)."""
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
            filename=upload.filename, new_version=True, size=document.size, sha256=document.sha256
        )
    new_title = clean_title(title, document.title)
    if new_title != document.title:
        document.title = new_title
        fields.append("title")
    document.status = Document.Status.PENDING
    document.progress = 0
    document.error = ""
    document.save(update_fields=fields)
    record_audit_event(
        "document.reingest_requested",
        actor=acting_user,
        resource_type="document",
        resource_id=document.id,
        context=context,
    )
    _enqueue_ingestion(document)
    return document


@transaction.atomic
def delete_document(*, acting_user: Any, document: Document) -> None:
    record_audit_event(
        "document.deleted",
        actor=acting_user,
        resource_type="document",
        resource_id=document.id,
        context={"filename": document.filename, "chunks": document.chunk_count},
    )
    document_id = document.id
    document.delete()
    transaction.on_commit(lambda: cache.delete(tasks.progress_key(document_id)))
