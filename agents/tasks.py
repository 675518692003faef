"""Celery tasks of the playbook corpus: ingest a document, re-embed a tenant.

Both are TenantTasks (`tenant_id=` required; the body runs in one transaction inside the
tenant context, and each run records a `task.<name>` audit event). Because the body is one
transaction, nothing it writes is visible before it ends: live progress goes to the cache
(`ingest:<document id>`, 0 to 100, read by the documents API while a document is pending or
processing) and the final state goes to the row.

Failures: the chunk work runs in a savepoint, so a failed ingestion leaves the document's
previous chunks exactly as they were (none for a new document). The row becomes FAILED with
a message for the consultant, and a `document.ingest_failed` event is recorded. The task
does not re-raise, not even for an unexpected error: re-raising would roll back the task's
transaction and with it the FAILED status and the audit event, leaving the document
"waiting" forever. Unexpected errors are logged with their traceback instead, and the
consultant can retry with `POST /api/v1/documents/{id}/reingest/`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from celery import shared_task
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from agents.corpus import IngestionError, chunk_text, extract_text
from agents.embeddings import Embedder, get_embedder, tenant_embedder
from agents.models import Chunk, Document
from audit.actions import record_audit_event
from conversations.models import Correction
from tenants.vault.backends import CredentialStoreUnavailable

logger = logging.getLogger(__name__)

PROGRESS_TTL_SECONDS = 3600
EMBED_BATCH = 32
UNEXPECTED_FAILURE = (
    "Something went wrong while reading this document. Try again in a few minutes; if it "
    "keeps failing, contact support."
)

T = TypeVar("T")


def progress_key(document_id: uuid.UUID | str) -> str:
    return f"ingest:{document_id}"


def set_live_progress(document_id: uuid.UUID | str, percent: int) -> None:
    cache.set(progress_key(document_id), max(0, min(100, int(percent))), PROGRESS_TTL_SECONDS)


def live_progress(document_id: uuid.UUID | str) -> int | None:
    value = cache.get(progress_key(document_id))
    return None if value is None else int(value)


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _embed_chunks(
    document_id: uuid.UUID, texts: Sequence[str], embedder: Embedder
) -> list[list[float]]:
    """Embeddings of `texts` in batches, progress going from 20% to 95%."""
    vectors: list[list[float]] = []
    for batch in _batches(texts, EMBED_BATCH):
        vectors.extend(embedder.embed_documents(batch))
        set_live_progress(document_id, 20 + 75 * len(vectors) // max(1, len(texts)))
    if len(vectors) != len(texts):
        raise RuntimeError(f"embedder returned {len(vectors)} vectors for {len(texts)} texts")
    return vectors


def _replace_chunks(document: Document, embedder: Embedder) -> int:
    """Extract, chunk, embed, and replace the document's chunks. Raises on any failure
    (the caller's savepoint then undoes everything)."""
    text = extract_text(bytes(document.source), document.content_type, document.filename)
    set_live_progress(document.id, 10)
    texts = chunk_text(text)
    if not texts:
        raise IngestionError(f"“{document.filename}” has no text to learn from.")
    set_live_progress(document.id, 20)
    vectors = _embed_chunks(document.id, texts, embedder)
    non_empty = [(t, v) for t, v in zip(texts, vectors, strict=True) if any(v)]
    if not non_empty:
        raise IngestionError(f"“{document.filename}” has no words to learn from.")
    Chunk.objects.filter(document=document).delete()
    Chunk.objects.bulk_create(
        [
            Chunk(
                document=document,
                position=position,
                text=text,
                embedding=vector,
                embedding_model=embedder.name,
            )
            for position, (text, vector) in enumerate(non_empty)
        ],
        batch_size=500,
    )
    return len(non_empty)


def _fail(document: Document, message: str, *, reason: str) -> None:
    document.status = Document.Status.FAILED
    document.progress = 0
    document.error = message[:2000]
    document.save(update_fields=["status", "progress", "error", "updated_at"])
    set_live_progress(document.id, 0)
    record_audit_event(
        "document.ingest_failed",
        resource_type="document",
        resource_id=document.id,
        context={"filename": document.filename, "reason": reason, "error": message[:500]},
    )


@shared_task(name="agents.ingest_document")
def ingest_document(document_id: str, *, tenant_id: str) -> dict[str, Any]:
    """Turn a document into embedded chunks (see the module docstring for failures)."""
    # Locked for the run: a second ingestion of the same document, a re-upload or a delete
    # waits for this one instead of interleaving with it.
    document = Document.objects.select_for_update().filter(id=document_id).first()
    if document is None:  # deleted before the task ran
        cache.delete(progress_key(document_id))
        return {"document": document_id, "status": "missing"}
    set_live_progress(document.id, 1)
    document.status = Document.Status.PROCESSING
    document.error = ""
    document.save(update_fields=["status", "error", "updated_at"])
    try:
        embedder = tenant_embedder()
        with transaction.atomic():
            count = _replace_chunks(document, embedder)
    except (IngestionError, ImproperlyConfigured) as exc:
        # The file itself (or the embedder's configuration): a message for the consultant.
        _fail(document, str(exc), reason=type(exc).__name__)
        return {"document": document_id, "status": Document.Status.FAILED, "error": str(exc)}
    except CredentialStoreUnavailable as exc:
        # Provider embeddings need the tenant's key, which the KMS or Vault could not unlock.
        logger.warning("ingestion of document %s: %s", document_id, exc)
        _fail(document, CredentialStoreUnavailable.user_message, reason=exc.code)
        return {"document": document_id, "status": Document.Status.FAILED}
    except Exception:
        logger.exception("ingestion of document %s failed unexpectedly", document_id)
        _fail(document, UNEXPECTED_FAILURE, reason="unexpected")
        return {"document": document_id, "status": Document.Status.FAILED}
    document.status = Document.Status.READY
    document.progress = 100
    document.error = ""
    document.chunk_count = count
    document.embedding_model = embedder.name
    document.ingested_at = timezone.now()
    document.save(
        update_fields=[
            "status",
            "progress",
            "error",
            "chunk_count",
            "embedding_model",
            "ingested_at",
            "updated_at",
        ]
    )
    set_live_progress(document.id, 100)
    record_audit_event(
        "document.ingested",
        resource_type="document",
        resource_id=document.id,
        context={
            "filename": document.filename,
            "chunks": count,
            "embedding_model": embedder.name,
            "sha256": document.sha256,
        },
    )
    return {"document": document_id, "status": Document.Status.READY, "chunks": count}


@shared_task(name="agents.reembed_tenant")
def reembed_tenant(*, tenant_id: str, embedder: str) -> dict[str, Any]:
    """Re-embed every chunk and correction of the tenant with `embedder` (a spec for
    `get_embedder`), in one transaction: retrieval switches from the old vectors to the
    new ones at commit, never sees a mix. Point the tenant (or PLAYBOOK_EMBEDDER) at the
    new embedder too, or retrieval keeps asking for the old one's vectors. Progress in the
    cache under `reembed:<tenant id>`. A failure re-raises: nothing changed."""
    target = get_embedder(embedder)
    key = f"reembed:{tenant_id}"
    chunk_ids = list(Chunk.objects.order_by("id").values_list("id", flat=True))
    correction_ids = list(Correction.objects.order_by("id").values_list("id", flat=True))
    total = max(1, len(chunk_ids) + len(correction_ids))
    done = 0
    cache.set(key, 0, PROGRESS_TTL_SECONDS)
    for ids in _batches(chunk_ids, EMBED_BATCH):
        chunks = list(Chunk.objects.filter(id__in=ids).only("id", "text"))
        for chunk, vector in zip(
            chunks, target.embed_documents([c.text for c in chunks]), strict=True
        ):
            chunk.embedding = vector
            chunk.embedding_model = target.name
        Chunk.objects.bulk_update(chunks, ["embedding", "embedding_model"])
        done += len(chunks)
        cache.set(key, 99 * done // total, PROGRESS_TTL_SECONDS)
    for cids in _batches(correction_ids, EMBED_BATCH):
        corrections = list(Correction.objects.filter(id__in=cids).only("id", "question"))
        for correction, vector in zip(
            corrections, target.embed_documents([c.question for c in corrections]), strict=True
        ):
            correction.embedding = vector
            correction.embedding_model = target.name
        Correction.objects.bulk_update(corrections, ["embedding", "embedding_model"])
        done += len(corrections)
        cache.set(key, 99 * done // total, PROGRESS_TTL_SECONDS)
    documents = Document.objects.filter(status=Document.Status.READY).update(
        embedding_model=target.name
    )
    record_audit_event(
        "playbook.reembedded",
        resource_type="tenant",
        resource_id=tenant_id,
        context={
            "embedding_model": target.name,
            "chunks": len(chunk_ids),
            "corrections": len(correction_ids),
            "documents": documents,
        },
    )
    cache.set(key, 100, PROGRESS_TTL_SECONDS)
    return {
        "embedding_model": target.name,
        "chunks": len(chunk_ids),
        "corrections": len(correction_ids),
    }
