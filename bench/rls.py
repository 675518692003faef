"""Benchmark of row-level security on a tenant table (conversations_conversation).

In the scratch database `bench_playbook` (bench/scratch.py), 1,000 tenants x 1,000
conversations are loaded (as the admin, loading only), then copied to `bench_conversations`:
same rows, same indexes, no RLS. Two queries of the product, for random tenants:

- the list page: SELECT id, title, updated_at ... WHERE tenant_id = $1
  ORDER BY updated_at DESC LIMIT 50;
- a count: SELECT count(*) ... WHERE tenant_id = $1;

each N times as the runtime role in a transaction entered as tenant_context does (a signed
context through `playbook_enter`): on the real table (RLS enabled and forced, the policy adds
`tenant_id = playbook_context_tenant()`, which verifies the bound context) and on the copy
(no RLS). RLS and plain queries are interleaved in random order; the time measured is the
statement (execute + fetch), the same entry runs before both.
Ratio = p50 RLS / p50 plain (target <= 1.10).
"""

from __future__ import annotations

import random
import time
from typing import Any

from django.db import connection

from bench.limiter import summary
from bench.scratch import admin, create_tenants, scratch_database
from tenants.context import ENTER_SQL, SYSTEM, sign_context

TENANTS = 1_000
ROWS_PER_TENANT = 1_000
QUERIES = 2_000
WARMUP = 200

LIST_SQL = (
    "SELECT id, title, updated_at FROM {table} WHERE tenant_id = %s "
    "ORDER BY updated_at DESC LIMIT 50"
)
COUNT_SQL = "SELECT count(*) FROM {table} WHERE tenant_id = %s"
RLS_TABLE = "conversations_conversation"
PLAIN_TABLE = "bench_conversations"


def load(runtime_role: str) -> tuple[list[str], float]:
    started = time.perf_counter()
    with admin() as conn:
        tenants = create_tenants(conn, TENANTS)
        conn.execute(
            "CREATE TEMP TABLE bench_t AS SELECT * FROM unnest(%s::uuid[], %s::bigint[]) "
            "AS x(tenant_id, user_id)",
            [[t for t, _ in tenants], [u for _, u in tenants]],
        )
        conn.execute(
            "INSERT INTO conversations_conversation "
            "(id, title, status, created_at, updated_at, client_id, tenant_id) "
            "SELECT gen_random_uuid(), 'Conversation ' || i, 'open', "
            "now() - make_interval(mins => i), "
            "now() - make_interval(secs => (random() * 8640000)::int), t.user_id, t.tenant_id "
            "FROM bench_t t CROSS JOIN generate_series(1, %s) AS i",
            [ROWS_PER_TENANT],
        )
        conn.execute(f"CREATE TABLE {PLAIN_TABLE} AS SELECT * FROM {RLS_TABLE}")  # noqa: S608
        for ddl in (
            f"ALTER TABLE {PLAIN_TABLE} ADD PRIMARY KEY (id)",
            f"CREATE INDEX ON {PLAIN_TABLE} (tenant_id, updated_at DESC)",
            f"CREATE INDEX ON {PLAIN_TABLE} (tenant_id, client_id)",
            f"CREATE UNIQUE INDEX ON {PLAIN_TABLE} (tenant_id, id)",
            f"CREATE INDEX ON {PLAIN_TABLE} (client_id)",
            f'GRANT SELECT ON {PLAIN_TABLE} TO "{runtime_role}"',
        ):
            conn.execute(ddl)
        conn.commit()
        conn.autocommit = True
        conn.execute(f"VACUUM ANALYZE {RLS_TABLE}")
        conn.execute(f"VACUUM ANALYZE {PLAIN_TABLE}")
    return [t for t, _ in tenants], time.perf_counter() - started


def measure(tenants: list[str]) -> dict[str, list[int]]:
    rng = random.Random(42)
    plan = [
        (kind, table, rng.choice(tenants))
        for _ in range(WARMUP + QUERIES)
        for kind in ("list", "count")
        for table in (RLS_TABLE, PLAIN_TABLE)
    ]
    warmup, plan = plan[: WARMUP * 4], plan[WARMUP * 4 :]
    rng.shuffle(plan)
    samples: dict[str, list[int]] = {}
    connection.ensure_connection()
    raw = connection.connection
    raw.autocommit = False
    with raw.cursor() as cur:
        for index, (kind, table, tenant) in enumerate(warmup + plan):
            sql = (LIST_SQL if kind == "list" else COUNT_SQL).format(table=table)
            cur.execute(ENTER_SQL, [sign_context(tenant, SYSTEM)])
            started = time.perf_counter_ns()
            cur.execute(sql, [tenant])
            rows = cur.fetchall()
            elapsed = time.perf_counter_ns() - started
            raw.commit()
            expected = 50 if kind == "list" else 1
            if len(rows) != expected or (kind == "count" and rows[0][0] != ROWS_PER_TENANT):
                raise AssertionError(f"{kind} on {table} for {tenant}: {rows[:1]!r}")
            if index >= len(warmup):
                key = f"{'rls' if table == RLS_TABLE else 'plain'}_{kind}"
                samples.setdefault(key, []).append(elapsed)
    raw.autocommit = True
    return samples


def run() -> dict[str, Any]:
    runtime_role = connection.settings_dict["USER"]
    with scratch_database():
        tenants, load_s = load(runtime_role)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            )
            if any(cursor.fetchone()):
                raise AssertionError("The runtime role bypasses RLS: the benchmark is void.")
        samples = measure(tenants)
        connection.close()
    s = {key: summary(values) for key, values in samples.items()}
    out: dict[str, Any] = {
        "rls_tenants": TENANTS,
        "rls_rows": TENANTS * ROWS_PER_TENANT,
        "rls_queries_each": QUERIES,
        "rls_load_s": round(load_s, 1),
    }
    for prefix, kind in (("", "list"), ("count_", "count")):
        for side in ("rls", "plain"):
            for p in ("p50", "p95", "p99"):
                out[f"{side}_{prefix}{p}_ms"] = s[f"{side}_{kind}"][p]
        ratio = s[f"rls_{kind}"]["p50"] / s[f"plain_{kind}"]["p50"]
        out[f"rls_{prefix}slowdown_ratio"] = round(ratio, 3)
        out[f"rls_{prefix}slowdown_ratio_p99"] = round(
            s[f"rls_{kind}"]["p99"] / s[f"plain_{kind}"]["p99"], 3
        )
    return out


TABLE = [
    ("rls_rows", "RLS bench: conversations (1,000 tenants x 1,000)", ""),
    ("rls_p50_ms", "list page (LIMIT 50) under RLS, p50", "ms"),
    ("rls_p95_ms", "list page under RLS, p95", "ms"),
    ("rls_p99_ms", "list page under RLS, p99", "ms"),
    ("plain_p50_ms", "list page, same table without RLS, p50", "ms"),
    ("plain_p95_ms", "list page without RLS, p95", "ms"),
    ("plain_p99_ms", "list page without RLS, p99", "ms"),
    ("rls_slowdown_ratio", "ratio RLS/plain, list page, p50 (target <= 1.10)", "x"),
    ("rls_count_p50_ms", "count(*) under RLS, p50", "ms"),
    ("rls_count_p99_ms", "count(*) under RLS, p99", "ms"),
    ("plain_count_p50_ms", "count(*) without RLS, p50", "ms"),
    ("plain_count_p99_ms", "count(*) without RLS, p99", "ms"),
    ("rls_count_slowdown_ratio", "ratio RLS/plain, count(*), p50", "x"),
]
