"""Benchmark of vector search under RLS (agents/retrieval.py) in the scratch database.

1,000 tenants and CHUNKS chunks of very different sizes share the one HNSW index
(`chunk_embedding_hnsw`, m=16, ef_construction=64, vector_cosine_ops): one tenant holds 40%
of the chunks, 20 tenants thousands, 100 tenants hundreds, the rest tens. Vectors: 384-dim
unit vectors around 256 shared cluster centres (each tenant uses 8 of them), made with
`random` (a pool of Gaussian noise vectors, cyclically shifted, keeps it fast) and written
with binary COPY (pgvector's wire format) as the admin; the index is dropped before loading
and rebuilt after, with the migration's definition.

For sample tenants of each class, queries near the tenant's own topics run as the runtime
role with the product's code: `tenant_context` + `hnsw_search(10)` (hnsw.iterative_scan =
relaxed_order, hnsw.ef_search = PLAYBOOK_HNSW_EF_SEARCH) + `nearest_chunks`, or the exact
comparison for a tenant under PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS (`nearest_rows`); the reference
is the same query with `distance + 0` (no index: exact). recall@10 = |approx & exact| / 10.
"""

from __future__ import annotations

import math
import os
import random
import struct
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import connection

from agents.retrieval import _chunks, by_distance, nearest_rows
from bench.limiter import summary
from bench.scratch import admin, create_tenants, scratch_database
from tenants.context import tenant_context

DIM = 384
TENANTS = 1_000
CHUNKS = int(os.environ.get("BENCH_VECTOR_CHUNKS", "200000"))
CLUSTERS = 256
NOISE_POOL = 2_048
K = 10
MODEL = "bench-model"
# (class, tenants, chunks each); the "small" class takes what is left.
CLASSES = [
    ("huge", 1, CHUNKS * 40 // 100),
    ("large", 20, CHUNKS * 3 // 200),
    ("medium", 100, CHUNKS // 500),
]
# (class, tenants sampled, queries per tenant)
SAMPLES = {"huge": (1, 40), "large": (5, 8), "medium": (10, 4), "small": (20, 3)}
HNSW_DDL = (
    "CREATE INDEX chunk_embedding_hnsw ON agents_chunk USING hnsw "
    "(embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
)


class _Embedder:
    name = MODEL
    dimensions = DIM


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


class Space:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.centres = [unit([rng.gauss(0, 1) for _ in range(DIM)]) for _ in range(CLUSTERS)]
        scale = 0.9 / math.sqrt(DIM)  # noise norm ~0.9 against a unit centre
        self.noise = [[rng.gauss(0, scale) for _ in range(DIM)] for _ in range(NOISE_POOL)]

    def near(self, centre: int) -> list[float]:
        c = self.centres[centre]
        n = self.noise[self.rng.randrange(NOISE_POOL)]
        s = self.rng.randrange(DIM)
        n = n[s:] + n[:s]
        if self.rng.random() < 0.5:
            n = n[::-1]
        return unit([a + b for a, b in zip(c, n, strict=True)])


def sizes() -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for name, count, each in CLASSES:
        out += [(name, each)] * count
    rest_tenants = TENANTS - len(out)
    rest = CHUNKS - sum(n for _, n in out)
    out += [
        ("small", rest // rest_tenants + (i < rest % rest_tenants)) for i in range(rest_tenants)
    ]
    return out


def load(space: Space) -> tuple[list[tuple[str, str, int, list[int]]], float, float]:
    """Returns [(tenant_id, class, chunks, topic clusters)], load seconds, build seconds."""
    rng = space.rng
    started = time.perf_counter()
    tenants: list[tuple[str, str, int, list[int]]] = []
    with admin() as conn:
        ids = create_tenants(conn, TENANTS)
        conn.execute("DROP INDEX chunk_embedding_hnsw")
        docs = conn.execute(
            "INSERT INTO agents_document (id, title, filename, content_type, size, sha256, "
            "source, status, progress, error, embedding_model, chunk_count, created_at, "
            "updated_at, tenant_id) SELECT gen_random_uuid(), 'Playbook', 'p.md', "
            "'text/markdown', 0, '', '', 'ready', 100, '', %s, 0, now(), now(), t "
            "FROM unnest(%s::uuid[]) AS t RETURNING tenant_id::text, id",
            [MODEL, [t for t, _ in ids]],
        ).fetchall()
        doc_of = dict(docs)
        pack = struct.Struct(f">hh{DIM}f").pack
        with conn.cursor().copy(
            "COPY agents_chunk (tenant_id, document_id, position, text, embedding, "
            "embedding_model) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "uuid", "int4", "text", "bytea", "text"])
            for (tenant, _), (cls, n) in zip(ids, sizes(), strict=True):
                topics = rng.sample(range(CLUSTERS), 8)
                tenants.append((tenant, cls, n, topics))
                doc = doc_of[tenant]
                for position in range(n):
                    v = space.near(rng.choice(topics))
                    copy.write_row(
                        (uuid.UUID(tenant), doc, position, "chunk", pack(DIM, 0, *v), MODEL)
                    )
        conn.commit()
        loaded = time.perf_counter()
        conn.autocommit = True
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute("SET max_parallel_maintenance_workers = 2")
        conn.execute(HNSW_DDL)
        conn.execute("VACUUM ANALYZE agents_chunk")
        # What ingestion keeps up to date (the search picks exact or HNSW by it).
        conn.execute(
            "UPDATE agents_document d SET chunk_count = "
            "(SELECT count(*) FROM agents_chunk c WHERE c.document_id = d.id)"
        )
        conn.execute("ANALYZE agents_document")
    return tenants, loaded - started, time.perf_counter() - loaded


def exact_ids(vector: list[float]) -> list[int]:
    chunks = _chunks(_Embedder())  # type: ignore[arg-type]
    return list(by_distance(chunks, vector, exact=True).values_list("id", flat=True)[:K])


def run() -> dict[str, Any]:
    rng = random.Random(7)
    t0 = time.perf_counter()
    space = Space(rng)
    with scratch_database():
        tenants, load_s, build_s = load(space)
        by_class: dict[str, list[tuple[str, str, int, list[int]]]] = {}
        for t in tenants:
            by_class.setdefault(t[1], []).append(t)
        latencies: list[int] = []
        by_class_latency: dict[str, list[int]] = {}
        recall_by_class: dict[str, list[float]] = {}
        tenant_recall: list[float] = []
        short = 0
        for cls, (n_tenants, n_queries) in SAMPLES.items():
            for tenant, _, _, topics in rng.sample(by_class[cls], n_tenants):
                per_tenant = []
                for _ in range(n_queries):
                    q = space.near(rng.choice(topics))
                    with tenant_context(tenant):
                        started = time.perf_counter_ns()
                        got = [r[0] for r in nearest_rows(q, _Embedder(), K)]  # type: ignore[arg-type]
                        elapsed = time.perf_counter_ns() - started
                        latencies.append(elapsed)
                        by_class_latency.setdefault(cls, []).append(elapsed)
                        truth = exact_ids(q)
                    short += len(got) < len(truth)
                    per_tenant.append(len(set(got) & set(truth)) / max(1, len(truth)))
                recall_by_class.setdefault(cls, []).extend(per_tenant)
                tenant_recall.append(sum(per_tenant) / len(per_tenant))
        connection.close()
    lat = summary(latencies)
    out: dict[str, Any] = {
        "vector_tenants": TENANTS,
        "vector_chunks": CHUNKS,
        "vector_ef_search": int(settings.PLAYBOOK_HNSW_EF_SEARCH),
        "vector_load_s": round(load_s, 1),
        "vector_hnsw_build_s": round(build_s, 1),
        "vector_queries": len(latencies),
        "vector_p50_ms": lat["p50"],
        "vector_p95_ms": lat["p95"],
        "vector_p99_ms": lat["p99"],
        "vector_short_results": short,
        "vector_recall_at_10_min": round(min(tenant_recall), 3),
        "vector_total_s": round(time.perf_counter() - t0, 1),
    }
    for cls, values in recall_by_class.items():
        out[f"vector_recall_at_10_{cls}"] = round(sum(values) / len(values), 3)
    for cls, values in by_class_latency.items():
        cls_lat = summary(values)
        out[f"vector_p50_ms_{cls}"], out[f"vector_p95_ms_{cls}"] = cls_lat["p50"], cls_lat["p95"]
    out["vector_exact_search_max_chunks"] = int(settings.PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS)
    for name, _, each in CLASSES:
        out[f"vector_chunks_per_tenant_{name}"] = each
    out["vector_chunks_per_tenant_small"] = sizes()[-1][1]
    return out


TABLE = [
    ("vector_chunks", "vector bench: chunks (1,000 tenants, one index)", ""),
    ("vector_hnsw_build_s", "HNSW build (m=16, ef_construction=64), 2 workers", "s"),
    ("vector_ef_search", "hnsw.ef_search (PLAYBOOK_HNSW_EF_SEARCH), iterative relaxed_order", ""),
    ("vector_p50_ms", "search under RLS, top 10, p50", "ms"),
    ("vector_p95_ms", "search under RLS, top 10, p95", "ms"),
    ("vector_p99_ms", "search under RLS, top 10, p99", "ms"),
    ("vector_exact_search_max_chunks", "tenants up to this many chunks are searched exactly", ""),
    ("vector_p50_ms_huge", "search p50, tenant with 40% of chunks (HNSW)", "ms"),
    ("vector_p95_ms_huge", "search p95, tenant with 40% of chunks (HNSW)", "ms"),
    ("vector_p50_ms_large", "search p50, tenants with 3,000 chunks (exact)", "ms"),
    ("vector_p95_ms_large", "search p95, tenants with 3,000 chunks (exact)", "ms"),
    ("vector_p95_ms_medium", "search p95, tenants with 400 chunks (exact)", "ms"),
    ("vector_p95_ms_small", "search p95, tenants with 22-23 chunks (exact)", "ms"),
    ("vector_recall_at_10_huge", "recall@10 vs exact, tenant with 40% of chunks", ""),
    ("vector_recall_at_10_large", "recall@10 vs exact, tenants with 3,000 chunks", ""),
    ("vector_recall_at_10_medium", "recall@10 vs exact, tenants with 400 chunks", ""),
    ("vector_recall_at_10_small", "recall@10 vs exact, tenants with 22-23 chunks", ""),
    ("vector_recall_at_10_min", "recall@10, worst sampled tenant (mean of its queries)", ""),
    ("vector_short_results", "searches returning fewer than 10 rows", ""),
]
