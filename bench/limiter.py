"""Benchmark of the Redis limiter (billing/limiter.py): not a test, run by `make bench`.

Measured in one run, against the Redis of the dev stack (LIMITER_REDIS_URL):

1. latency of one limited call, ADMIT + SETTLE (two EVALSHA round trips, as `reserve()` and
   `settle()` make them), over N calls of one tenant spread over 50 users, with
   enterprise-like limits so every call is admitted and the one-minute windows fill up
   (the tokens window is kept in per-second buckets, at most 60, so the cost is bounded);
2. latency of a plain Redis GET of the same tenant's spend key, on the same connection pool
   (the floor: one round trip);
3. the same calls spread over 50 tenants (small windows: the typical case);
4. a burst of 200 threads released together against a limit of 50 requests per minute:
   exactly 50 must be admitted (`limiter_over_admitted` = admitted - limit, expected 0).

It calls the Lua scripts directly (`billing.limiter._script`, keys from `billing.limiter.keys`)
for random tenant ids, with the period's spend key set first as `rebuild_spend` would, so no
database row is needed; every key it made is deleted at the end.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any

CALLS = 5_000
WARMUP = 200
USERS = 50
BURST_THREADS = 200
BURST_LIMIT = 50
ORDER = ("tenant_requests", "user_requests", "tenant_tokens", "spend", "reserved", "reservations")


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(samples_ns: list[int]) -> dict[str, float]:
    ms = [s / 1e6 for s in samples_ns]
    return {
        "p50": round(percentile(ms, 50), 4),
        "p95": round(percentile(ms, 95), 4),
        "p99": round(percentile(ms, 99), 4),
        "mean": round(statistics.fmean(ms), 4),
        "max": round(max(ms), 4),
    }


class Tenant:
    """Keys and limits of one throwaway tenant (a random id: no database row)."""

    def __init__(self, limiter: Any, *, rpm: int, user_rpm: int, tpm: int) -> None:
        self.limiter = limiter
        self.id = str(uuid.uuid4())
        self.period = limiter.period_of()
        self.rpm, self.user_rpm, self.tpm = rpm, user_rpm, tpm
        self.made: set[str] = set()
        spend = limiter.keys(self.id, None, self.period)["spend"]
        # What rebuild_spend() does on a cold cache: the period's settled spend (here 0).
        limiter.client().set(spend, 0, nx=True, ex=limiter.period_ttl())
        self.made.add(spend)

    def admit(
        self, user: object, tokens: int, cost: int, client: Any = None
    ) -> tuple[str, str, int]:
        lim = self.limiter
        k = lim.keys(self.id, user, self.period)
        self.made.update(k.values())
        request_id = uuid.uuid4().hex
        args = [
            int(time.time() * 1000),
            lim.WINDOW_MS,
            self.rpm,
            self.user_rpm,
            self.tpm,
            tokens,
            cost,
            0,  # soft cap: none
            0,  # hard cap: none
            request_id,
            lim.period_ttl(),
            lim.RESERVATION_TTL_S,
        ]
        verdict, value = lim._script("admit", lim.ADMIT)(
            keys=[k[n] for n in ORDER], args=args, client=client
        )
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        return verdict, request_id, int(value)

    def settle(self, request_id: str, cost: int, tokens: int, client: Any = None) -> None:
        lim = self.limiter
        k = lim.keys(self.id, None, self.period)
        lim._script("settle", lim.SETTLE)(
            keys=[k["spend"], k["reserved"], k["reservations"], k["tenant_tokens"]],
            args=[request_id, cost, tokens, lim.period_ttl()],
            client=client,
        )

    def cleanup(self) -> None:
        if self.made:
            self.limiter.client().delete(*self.made)


def latency(limiter: Any) -> dict[str, Any]:
    # Enterprise-like limits: 6,000 requests and 4M tokens a minute per tenant, 600 per user.
    tenant = Tenant(limiter, rpm=6_000, user_rpm=600, tpm=4_000_000)
    lua: list[int] = []
    refused = 0
    try:
        for i in range(WARMUP + CALLS):
            started = time.perf_counter_ns()
            verdict, request_id, _ = tenant.admit(i % USERS, tokens=600, cost=1_500)
            if verdict.startswith("ok"):
                tenant.settle(request_id, cost=1_234, tokens=512)
            else:
                refused += 1
            if i >= WARMUP:
                lua.append(time.perf_counter_ns() - started)
        spend_key = limiter.keys(tenant.id, None, tenant.period)["spend"]
        redis = limiter.client()
        window = int(redis.zcard(limiter.keys(tenant.id, None, tenant.period)["tenant_requests"]))
        get: list[int] = []
        for i in range(WARMUP + CALLS):
            started = time.perf_counter_ns()
            redis.get(spend_key)
            if i >= WARMUP:
                get.append(time.perf_counter_ns() - started)
        settled = int(redis.get(spend_key) or 0)
    finally:
        tenant.cleanup()
    lua_ms, get_ms = summary(lua), summary(get)
    first, last = summary(lua[:1000]), summary(lua[-1000:])
    return {
        "limiter_calls": CALLS,
        "limiter_p50_ms": lua_ms["p50"],
        "limiter_p95_ms": lua_ms["p95"],
        "limiter_p99_ms": lua_ms["p99"],
        "limiter_mean_ms": lua_ms["mean"],
        "limiter_max_ms": lua_ms["max"],
        "limiter_first_1000_p50_ms": first["p50"],
        "limiter_last_1000_p50_ms": last["p50"],
        "limiter_window_entries": window,
        "limiter_refused_in_latency_run": refused,
        "limiter_settled_ok": settled == 1_234 * (WARMUP + CALLS - refused),
        "limiter_get_p50_ms": get_ms["p50"],
        "limiter_get_p95_ms": get_ms["p95"],
        "limiter_get_p99_ms": get_ms["p99"],
        "limiter_ratio_p50": round(lua_ms["p50"] / get_ms["p50"], 2),
        "limiter_ratio_p99": round(lua_ms["p99"] / get_ms["p99"], 2),
    }


def spread(limiter: Any) -> dict[str, Any]:
    """The same N calls spread over 50 tenants (about 100 each): small windows, the
    typical case, next to the single-tenant run above where one window holds them all."""
    tenants = [Tenant(limiter, rpm=1_200, user_rpm=300, tpm=1_000_000) for _ in range(50)]
    samples: list[int] = []
    try:
        for i in range(CALLS):
            tenant = tenants[i % len(tenants)]
            started = time.perf_counter_ns()
            verdict, request_id, _ = tenant.admit(i % USERS, tokens=600, cost=1_500)
            if verdict.startswith("ok"):
                tenant.settle(request_id, cost=1_234, tokens=512)
            samples.append(time.perf_counter_ns() - started)
    finally:
        for tenant in tenants:
            tenant.cleanup()
    ms = summary(samples)
    return {
        "limiter_spread_p50_ms": ms["p50"],
        "limiter_spread_p95_ms": ms["p95"],
        "limiter_spread_p99_ms": ms["p99"],
    }


def one_burst(limiter: Any, client: Any) -> dict[str, Any]:
    """BURST_THREADS threads, released together by a barrier, each one ADMIT (+ SETTLE when
    admitted) for the same tenant, limited to BURST_LIMIT requests a minute."""
    tenant = Tenant(limiter, rpm=BURST_LIMIT, user_rpm=0, tpm=0)
    barrier = threading.Barrier(BURST_THREADS)
    verdicts: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            verdict, request_id, _ = tenant.admit(index, tokens=0, cost=0, client=client)
            with lock:
                verdicts.append(verdict)
            if verdict.startswith("ok"):
                tenant.settle(request_id, cost=0, tokens=0, client=client)
        except Exception as exc:  # counted, never hidden
            with lock:
                errors.append(type(exc).__name__)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST_THREADS)]
    started = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        elapsed_ms = (time.perf_counter() - started) * 1000
        requests_key = limiter.keys(tenant.id, None, tenant.period)["tenant_requests"]
        window = int(limiter.client().zcard(requests_key))
    finally:
        tenant.cleanup()
    return {
        "admitted": sum(1 for v in verdicts if v.startswith("ok")),
        "rate_limited": sum(1 for v in verdicts if v == "rate_limited"),
        "errors": len(errors),
        "error_types": sorted(set(errors)),
        "window": window,
        "ms": round(elapsed_ms, 1),
    }


def burst(limiter: Any) -> dict[str, Any]:
    import redis
    from django.conf import settings

    # A pool with a connection for every thread (as 200 requests spread over many web and
    # worker processes would have): what is measured is the script's atomicity.
    pool_client = redis.Redis.from_url(
        settings.LIMITER_REDIS_URL, max_connections=BURST_THREADS + 8, socket_timeout=5.0
    )
    try:
        sized = one_burst(limiter, pool_client)
    finally:
        pool_client.close()
    # The same burst through the limiter's own client, as one process with 200 threads:
    # redis-py's default pool holds 100 connections, the rest fail (LimiterUnavailable, 503).
    shared = one_burst(limiter, None)
    return {
        "limiter_burst_threads": BURST_THREADS,
        "limiter_burst_limit": BURST_LIMIT,
        "limiter_burst_admitted": sized["admitted"],
        "limiter_burst_rate_limited": sized["rate_limited"],
        "limiter_burst_errors": sized["errors"],
        "limiter_burst_window_entries": sized["window"],
        "limiter_burst_ms": sized["ms"],
        "limiter_over_admitted": sized["admitted"] - BURST_LIMIT,
        "limiter_burst_one_process_admitted": shared["admitted"],
        "limiter_burst_one_process_errors": shared["errors"],
        "limiter_burst_one_process_error_types": shared["error_types"],
        "limiter_burst_one_process_over_admitted": max(0, shared["admitted"] - BURST_LIMIT),
    }


def run() -> dict[str, Any]:
    from billing import limiter

    limiter.reset_client()
    info = limiter.client().info("server")
    results: dict[str, Any] = {"redis_version": info.get("redis_version", "")}
    results.update(latency(limiter))
    results.update(spread(limiter))
    results.update(burst(limiter))
    return results


# Rows of the Markdown table: (key, label, unit).
TABLE = [
    ("limiter_p50_ms", "Lua ADMIT+SETTLE, p50", "ms"),
    ("limiter_p95_ms", "Lua ADMIT+SETTLE, p95", "ms"),
    ("limiter_p99_ms", "Lua ADMIT+SETTLE, p99", "ms"),
    ("limiter_get_p50_ms", "plain GET, p50", "ms"),
    ("limiter_get_p95_ms", "plain GET, p95", "ms"),
    ("limiter_get_p99_ms", "plain GET, p99", "ms"),
    ("limiter_ratio_p50", "ratio Lua/GET, p50", "x"),
    ("limiter_first_1000_p50_ms", "Lua p50, first 1,000 calls (window filling)", "ms"),
    ("limiter_last_1000_p50_ms", "Lua p50, last 1,000 calls (about 5,000 in the window)", "ms"),
    ("limiter_spread_p50_ms", "Lua ADMIT+SETTLE over 50 tenants (about 100 calls each), p50", "ms"),
    ("limiter_spread_p99_ms", "Lua ADMIT+SETTLE over 50 tenants (about 100 calls each), p99", "ms"),
    ("limiter_burst_admitted", "burst: admitted of 200 threads, limit 50/min", ""),
    ("limiter_over_admitted", "burst: over-admitted (expected 0)", ""),
    ("limiter_burst_errors", "burst: errors", ""),
    (
        "limiter_burst_one_process_errors",
        "same burst from one process (redis-py pool of 100): errors",
        "",
    ),
    (
        "limiter_burst_one_process_over_admitted",
        "same burst from one process: over-admitted",
        "",
    ),
]
