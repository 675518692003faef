"""Retrieval over the playbook and the corrections, under row-level security.

All tenants' chunk vectors share one HNSW index (`chunk_embedding_hnsw`). The index knows
nothing of tenants: it returns the globally nearest vectors, and RLS (plus our filters)
drops those of other tenants. A plain HNSW scan stops after `ef_search` candidates, so a
tenant holding 1% of the vectors would get almost nothing back. Each search therefore runs
in a transaction (a savepoint in a request) with

    SET LOCAL hnsw.iterative_scan = relaxed_order   -- keep scanning until k rows pass
    SET LOCAL hnsw.ef_search = PLAYBOOK_HNSW_EF_SEARCH

    SET LOCAL enable_sort = off                     -- see below

and re-sorts the k rows it gets (relaxed order may return them slightly out of order).
PostgreSQL cannot estimate how many rows the tenant policy keeps (its setting is read at run
time), so it guesses one and plans an exact sort of the tenant's rows: 170 ms for a tenant
with 80,000 chunks, where the index takes 8 ms. Sorting is therefore off for the search's
transaction; the index is the only other way to order by distance.

A small tenant is searched exactly instead (`PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS`, 5,000 by
default): its few vectors lie scattered through everyone's graph, so the iterative scan walks
far to collect k of them, while comparing each of its chunks (read through the tenant's
btree index) is quick and exact. `exact_search_ids` is the brute-force reference, for tests
and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import ExpressionWrapper, FloatField, QuerySet, Sum, Value
from pgvector.django import CosineDistance

from agents.embeddings import Embedder, tenant_embedder
from agents.models import Chunk, Document
from conversations.models import Correction
from tenants.context import require_tenant_id

_HNSW_SETTINGS = ("hnsw.iterative_scan", "hnsw.ef_search", "enable_sort")


@dataclass
class Passage:
    document_id: Any  # uuid.UUID
    title: str
    chunk_id: int
    position: int
    text: str
    score: float  # cosine similarity, 1.0 = same direction


def ef_search_for(k: int) -> int:
    return max(1, min(1000, max(int(settings.PLAYBOOK_HNSW_EF_SEARCH), k)))


@contextmanager
def hnsw_search(k: int) -> Iterator[None]:
    """Run the block in a transaction with the iterative HNSW scan on and sorting off; the
    previous values of the settings are put back on the way out (they are transaction-local
    anyway)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('hnsw.iterative_scan', true), "
                "current_setting('hnsw.ef_search', true), "
                "current_setting('enable_sort', true), "
                "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                "set_config('hnsw.ef_search', %s, true), "
                "set_config('enable_sort', 'off', true)",
                [str(ef_search_for(k))],
            )
            previous = cursor.fetchone()[:3]
        yield
        with connection.cursor() as cursor:
            for name, value in zip(_HNSW_SETTINGS, previous, strict=True):
                if value:
                    cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
                else:
                    cursor.execute(f"SET LOCAL {name} TO DEFAULT")


def _query_vector(text: str, embedder: Embedder) -> list[float] | None:
    if not text or not text.strip():
        return None
    vector = embedder.embed_query(text)
    return vector if any(vector) else None


def _chunks(embedder: Embedder) -> QuerySet[Chunk]:
    return Chunk.objects.filter(
        embedding_model=embedder.name, document__status=Document.Status.READY
    )


_PASSAGE_FIELDS = ("id", "document_id", "document__title", "position", "text", "distance")


def _passages(rows: Sequence[tuple[Any, ...]]) -> list[Passage]:
    passages = [
        Passage(
            document_id=document_id,
            title=title,
            chunk_id=chunk_id,
            position=position,
            text=text,
            score=1.0 - float(distance),
        )
        for chunk_id, document_id, title, position, text, distance in rows
    ]
    passages.sort(key=lambda p: (-p.score, p.chunk_id))
    return passages


def search_playbook(query: str, k: int = 5, *, embedder: Embedder | None = None) -> list[Passage]:
    """The current tenant's k passages nearest to `query`: chunks of ready documents,
    embedded by the tenant's embedder (or `embedder`), best first."""
    require_tenant_id()
    if k <= 0:
        return []
    embedder = embedder or tenant_embedder()
    vector = _query_vector(query, embedder)
    if vector is None:
        return []
    return _passages(nearest_rows(vector, embedder, k))


def searchable_chunks_count() -> int:
    """How many chunks the current tenant's ready documents have (from the documents, so it
    costs one small aggregate, not a count of the chunk table)."""
    total = Document.objects.filter(status=Document.Status.READY).aggregate(n=Sum("chunk_count"))
    return int(total["n"] or 0)


def nearest_rows(vector: list[float], embedder: Embedder, k: int) -> list[tuple[Any, ...]]:
    """The current tenant's k nearest searchable chunks (rows as in `nearest_chunks`): an
    exact comparison of every chunk for a small tenant, the HNSW index for a large one."""
    exact = searchable_chunks_count() <= settings.PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS
    return _nearest(_chunks(embedder), vector, k, exact=exact, fields=_PASSAGE_FIELDS)


def by_distance(
    queryset: QuerySet[Any], vector: list[float], *, exact: bool = False
) -> QuerySet[Any]:
    """`queryset` with each row's cosine `distance` to `vector`, nearest first: in the HNSW
    index's order (run it inside `hnsw_search`), or with `exact`, by `(embedding <=> q) + 0`,
    which the index cannot serve, so every row the query keeps is compared."""
    if exact:
        distance = ExpressionWrapper(
            CosineDistance("embedding", vector) + Value(0.0), output_field=FloatField()
        )
        return queryset.annotate(distance=distance).order_by("distance", "id")
    return queryset.annotate(distance=CosineDistance("embedding", vector)).order_by("distance")


def _nearest(
    queryset: QuerySet[Any],
    vector: list[float],
    k: int,
    *,
    exact: bool,
    fields: Sequence[str] = (),
) -> list[Any]:
    """The k rows of `queryset` nearest to `vector` (as tuples of `fields` when given), each
    search in a transaction of its own (with the HNSW settings unless `exact`)."""
    ordered = by_distance(queryset, vector, exact=exact)
    if fields:
        ordered = ordered.values_list(*fields)
    with transaction.atomic() if exact else hnsw_search(k):
        return list(ordered[:k])


def nearest_chunks(vector: list[float], embedder: Embedder) -> QuerySet[Chunk, tuple[Any, ...]]:
    """The tenant's searchable chunks by cosine distance to `vector` (slice it; run it
    inside `hnsw_search`). Rows: id, document_id, document title, position, text, distance."""
    return by_distance(_chunks(embedder), vector).values_list(*_PASSAGE_FIELDS)


def exact_search(query: str, k: int = 5, *, embedder: Embedder | None = None) -> list[Passage]:
    """Like search_playbook, by brute force: `(embedding <=> q) + 0` cannot use the index,
    so every chunk of the tenant is compared. The reference for recall checks."""
    require_tenant_id()
    if k <= 0:
        return []
    embedder = embedder or tenant_embedder()
    vector = _query_vector(query, embedder)
    if vector is None:
        return []
    return _passages(_nearest(_chunks(embedder), vector, k, exact=True, fields=_PASSAGE_FIELDS))


def exact_search_ids(query: str, k: int = 5, *, embedder: Embedder | None = None) -> list[int]:
    return [p.chunk_id for p in exact_search(query, k, embedder=embedder)]


def similar_corrections(
    question: str, k: int = 3, *, embedder: Embedder | None = None
) -> list[tuple[Correction, float]]:
    """The current tenant's k corrections whose question is nearest to `question`, with
    their cosine similarity, best first (few-shot examples for the agent)."""
    require_tenant_id()
    if k <= 0:
        return []
    embedder = embedder or tenant_embedder()
    vector = _query_vector(question, embedder)
    if vector is None:
        return []
    corrections = Correction.objects.filter(embedding_model=embedder.name)
    limit = settings.PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS
    few = corrections[: limit + 1].count() <= limit  # few: compare each (counts <= limit+1)
    found = _nearest(corrections, vector, k, exact=few)
    scored = [(c, 1.0 - float(c.distance)) for c in found]
    scored.sort(key=lambda pair: -pair[1])
    return scored
