"""Benchmark of the tenant machinery, end to end over HTTP (issue 9, benchmark 1).

The real app runs under gunicorn on a loopback port (WORKERS processes x THREADS threads,
DEBUG off, the local OpenID provider on so the app serves its own JWKS), with bench/settings.py,
whose URLconf (bench/urls.py) adds two endpoints to the product's:

- machinery, `GET /bench/machinery/conversations/` with `Authorization: Bearer <JWT>`: the
  product's conversation list (ConversationViewSet) behind the whole chain: the JWT verified
  against the cached JWKS (RS256), the user bound to the token's subject and tenant, the
  tenant entered with set_config in the request's transaction, the role looked up, the page
  read under row-level security; plus what a client's question does before its agent run:
  the limiter's admission (`billing.limiter.check_request`, Lua ADMIT + SETTLE in Redis) and
  the entitlement registry (`agents.registry.resolve`, cached in Redis, 60 s);
- plain, `GET /bench/plain/<tenant_id>/conversations/`: a DRF ListAPIView over an
  unprotected copy of the table (same rows, same indexes, no RLS), no authentication,
  same fields, serializer kind, page size (50, with the count) and ordering.

Both are the same Django app with the same middleware, so the difference is the machinery.
Data, in the scratch database `bench_playbook` (bench/scratch.py): TENANTS tenants on the
enterprise plan (its real limits, which this load stays far below), each with one
consultant who has an OIDC identity and one client with ROWS_PER_TENANT conversations. One
RS256 token per consultant, signed with the local provider's key (a key made for this run).
Requests rotate over all tenants in the same order for both endpoints.

Load: wrk (Debian package), one thread, CONNECTIONS keep-alive connections, with
bench/machinery.lua, which counts every status but 200 (the run fails on any) and reports
p50/p95/p99 from wrk's histogram. After a warm-up (every worker has fetched the JWKS, the
registry cache and the spend ledger are warm), two phases, plain and machinery alternating
ROUNDS times, DURATION_S each, the first of each pair swapped every round:

1. saturation: closed loop at full speed -> requests per second of each;
   `machinery_throughput_ratio` = median over rounds of machinery rps / plain rps of the pair;
2. the same offered load for both, PACED_LOAD x the slower side's rps of phase 1, as
   exponential pauses between requests on each connection (Poisson-like arrivals) -> latency
   with little queueing; `machinery_overhead_p95_ms` = median over rounds of machinery p95 -
   plain p95.

Why two phases: in a saturated closed loop the latency of each side is mostly queueing
(about CONNECTIONS / rps), so the difference of p95s there restates the throughput ratio
instead of measuring what the chain adds to a request; it is reported too
(`machinery_saturated_overhead_p95_ms`).

During every run the CPU time of the server is read from /proc: its gunicorn workers and the
PostgreSQL backends of the scratch database (Redis is the dev stack's, shared, and not
counted). When other work shares the machine, requests per second swing from run to run;
the CPU each request costs moves far less, and `machinery_cpu_ratio` (plain CPU / chain CPU
per request, median over every pair of both phases) is what the throughput ratio comes to
when the server has the cores to itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import jwt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.db import connection, connections
from jwcrypto import jwk

from bench.scratch import (
    NAME,
    add_user_per_tenant,
    admin,
    create_tenants,
    scratch_database,
)
from config.processes import free_port, spawn, stop_groups, tail_of

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "machinery.lua"
BIN_DIR = Path(sys.executable).parent

TENANTS = int(os.environ.get("BENCH_MACHINERY_TENANTS", "200"))
ROWS_PER_TENANT = int(os.environ.get("BENCH_MACHINERY_ROWS", "200"))
WORKERS = int(os.environ.get("BENCH_MACHINERY_WORKERS", "2"))
THREADS = int(os.environ.get("BENCH_MACHINERY_THREADS", "4"))
CONNECTIONS = int(os.environ.get("BENCH_MACHINERY_CONNECTIONS", "8"))
DURATION_S = int(os.environ.get("BENCH_MACHINERY_SECONDS", "15"))
ROUNDS = int(os.environ.get("BENCH_MACHINERY_ROUNDS", "3"))
WARMUP_S = 5
PACED_LOAD = 0.5
PAGE_SIZE = 50
REDIS_DB = 8  # the server's Redis database index (cache, limiter), on the dev stack's Redis
PLAIN_TABLE = "bench_machinery_conversations"
RLS_TABLE = "conversations_conversation"
TARGET_OVERHEAD_P95_MS = 5.0
TARGET_THROUGHPUT_RATIO = 0.85
READY_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- data


def load(runtime_role: str, issuer: str) -> tuple[list[tuple[str, str]], float]:
    """Tenants, people, memberships and conversations, and the unprotected copy.
    Returns [(tenant_id, consultant's OIDC subject)] and the seconds it took."""
    started = time.perf_counter()
    with admin() as conn:
        create_tenants(conn, TENANTS)  # one user each: the consultant who calls the API
        conn.execute("UPDATE tenants_tenant SET plan = 'enterprise' WHERE slug LIKE 'bench-%%'")
        conn.execute(
            "UPDATE accounts_user SET oidc_issuer = %s, oidc_subject = 'bench-subject-' || id, "
            "email = 'consultant@' || id || '.bench.example' WHERE username LIKE 'bench-user-%%'",
            [issuer],
        )
        add_user_per_tenant(conn, "bench-client-")  # each tenant's client
        conn.execute(
            "INSERT INTO accounts_membership (role, created_at, tenant_id, user_id) "
            "SELECT CASE WHEN u.username LIKE 'bench-user-%%' THEN 'consultant' "
            "ELSE 'client' END, now(), u.tenant_id, u.id FROM accounts_user u "
            "WHERE u.username LIKE 'bench-user-%%' OR u.username LIKE 'bench-client-%%'"
        )
        # Distinct updated_at within a tenant (one minute apart, jittered), so both endpoints
        # order a tenant's rows the same way and their pages can be compared.
        conn.execute(
            f"INSERT INTO {RLS_TABLE} "  # noqa: S608
            "(id, title, status, created_at, updated_at, client_id, tenant_id) "
            "SELECT gen_random_uuid(), 'Conversation ' || i, 'open', "
            "now() - make_interval(days => i), "
            "now() - make_interval(mins => i, secs => (random() * 50)::int), c.id, c.tenant_id "
            "FROM accounts_user c CROSS JOIN generate_series(1, %s) AS i "
            "WHERE c.username LIKE 'bench-client-%%'",
            [ROWS_PER_TENANT],
        )
        conn.execute(f"CREATE TABLE {PLAIN_TABLE} AS SELECT * FROM {RLS_TABLE}")  # noqa: S608
        # The same indexes as the real table (its definitions, renamed).
        defs = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s ORDER BY indexname",
            [RLS_TABLE],
        ).fetchall()
        for n, (indexdef,) in enumerate(defs):
            match = re.fullmatch(r"CREATE (UNIQUE )?INDEX \S+ ON (\S+) (USING .*)", indexdef)
            if match is None:
                raise AssertionError(f"unexpected index definition: {indexdef}")
            conn.execute(
                f"CREATE {match[1] or ''}INDEX bench_plain_idx_{n} ON {PLAIN_TABLE} {match[3]}"
            )
        conn.execute(f'GRANT SELECT ON {PLAIN_TABLE} TO "{runtime_role}"')
        identities = conn.execute(
            "SELECT t.id::text, u.oidc_subject FROM tenants_tenant t JOIN accounts_user u "
            "ON u.tenant_id = t.id AND u.username LIKE 'bench-user-%%' "
            "WHERE t.slug LIKE 'bench-%%' ORDER BY split_part(t.slug, '-', 2)::int"
        ).fetchall()
        conn.commit()
        conn.autocommit = True
        for table in (RLS_TABLE, PLAIN_TABLE, "accounts_user", "accounts_membership"):
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("ANALYZE tenants_tenant")
    return [(t, s) for t, s in identities], time.perf_counter() - started


# --------------------------------------------------------------------------- tokens


def make_signing_key(directory: Path) -> tuple[Path, bytes, str]:
    """An RSA key for the local provider of this run: (file, PEM, kid as its JWKS names it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / "idp_rsa.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    # devidp.tokens names the key by its thumbprint, as django-oauth-toolkit's JWKS does.
    return path, pem, jwk.JWK.from_pem(pem).thumbprint()


def mint(pem: bytes, kid: str, issuer: str, tenant_id: str, subject: str) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": settings.OIDC_API_AUDIENCE[0],
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + 24 * 3600,
        settings.OIDC_TENANT_CLAIM: tenant_id,
        settings.OIDC_ROLES_CLAIM: ["consultant"],
    }
    return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})


# --------------------------------------------------------------------------- the server


def database_url(alias: str) -> str:
    """A URL for `alias` as it is configured now (inside scratch_database(): the scratch
    database), in the form config/settings.py reads (django-environ keeps a socket
    directory and other query parameters in OPTIONS)."""
    s = connections[alias].settings_dict
    user, password = quote(s["USER"], safe=""), quote(s["PASSWORD"] or "", safe="")
    host, port = str(s.get("HOST") or ""), str(s.get("PORT") or "")
    options = {k: str(v) for k, v in (s.get("OPTIONS") or {}).items() if isinstance(v, str | int)}
    if host.startswith("/"):
        options["host"], host = host, ""
    netloc = f"{user}:{password}@{host}{':' + port if port else ''}"
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in options.items())
    return f"postgres://{netloc}/{s['NAME']}{'?' + query if query else ''}"


def redis_url(index: int) -> str:
    return urlunsplit(urlsplit(settings.REDIS_URL)._replace(path=f"/{index}"))


def server_env(port: int, key_file: Path) -> dict[str, str]:
    redis = redis_url(REDIS_DB)
    env = dict(os.environ)
    for name in ("OIDC_ISSUER", "OIDC_OP_JWKS_ENDPOINT", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"):
        env.pop(name, None)  # the issuer follows SITE_URL: the app's own provider
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "PLAYBOOK_ENV": "development",
            "DEBUG": "0",
            "DEV_IDP": "1",
            "DEV_IDP_RSA_KEY_FILE": str(key_file),
            "SITE_URL": f"http://127.0.0.1:{port}",
            "DATABASE_URL": database_url("default"),
            "DATABASE_OWNER_URL": database_url("owner"),
            "REDIS_URL": redis,
            "LIMITER_REDIS_URL": redis,
            "CELERY_BROKER_URL": redis,
            "CELERY_RESULT_BACKEND": redis,
            # Connections kept for the whole run (the product's default, 60 s, would reconnect
            # every thread once a minute on both sides alike; the CPU meter would lose the
            # backends that end).
            "DATABASE_CONN_MAX_AGE": "3600",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = spawn(
        [
            str(BIN_DIR / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(WORKERS),
            "--threads",
            str(THREADS),
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "--keep-alive",
            "75",  # paced connections may pause for seconds between requests
        ],
        env,
        log,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    answer = b"(none)"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{tail_of(log)}")
        with contextlib.suppress(OSError):
            status, _, answer = get(f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                return proc
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(
        f"gunicorn not ready after {READY_TIMEOUT_S:.0f} s: /readyz said {answer[:500]!r}\n"
        f"{tail_of(log)}"
    )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    stop_groups([proc])


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (so it may land on any worker)."""
    request = urllib.request.Request(url)  # noqa: S310 (our loopback server)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# --------------------------------------------------------------------------- load


def warm_up(base: str, items: list[tuple[str, str, str]]) -> int:
    """Sequential requests on new connections until every worker has served the machinery
    endpoint (each fetched the JWKS and discovery document from the app itself, which must
    not happen under full concurrency: a worker whose threads all wait for the keys could not
    serve its own fetch). The first tenants' pages are compared between the two endpoints.
    Returns the number of requests made."""
    workers: set[str] = set()
    made = 0
    deadline = time.monotonic() + 60
    while len(workers) < WORKERS or made < 4 * WORKERS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up reached {len(workers)} of {WORKERS} workers")
        plain_path, machinery_path, token = items[made % len(items)]
        status, headers, body = get(base + machinery_path, token)
        if status != 200:
            raise AssertionError(f"machinery warm-up: {status} {body[:300]!r}")
        workers.add(headers.get("X-Bench-Worker", ""))
        if made < 5:
            status, _, plain_body = get(base + plain_path)
            if status != 200:
                raise AssertionError(f"plain warm-up: {status} {plain_body[:300]!r}")
            mine, plain = json.loads(body), json.loads(plain_body)
            if mine["count"] != ROWS_PER_TENANT or len(mine["results"]) != PAGE_SIZE:
                raise AssertionError(f"machinery page: count {mine['count']}")
            if mine["results"] != plain["results"] or mine["count"] != plain["count"]:
                raise AssertionError("the two endpoints serve different pages of one tenant")
        made += 1
    return made


def wrk(base: str, items_file: Path, seconds: int, mean_delay_ms: float = 0.0) -> dict[str, Any]:
    command = [
        shutil.which("wrk") or "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        base,
        "--",
        str(items_file),
        f"{mean_delay_ms:.3f}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    line = next(
        (x for x in done.stdout.splitlines() if x.startswith("WRK_RESULT ")),
        None,
    )
    if done.returncode or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    r = json.loads(line.removeprefix("WRK_RESULT "))
    errors = {
        k: r[k]
        for k in ("non_200", "connect_errors", "read_errors", "write_errors", "timeouts")
        if r[k]
    }
    if errors or not r["requests"]:
        raise AssertionError(
            f"wrk {items_file.name}: {errors or 'no requests'} "
            f"(first non-200 status: {r['first_non_200']}) of {r['requests']} requests"
        )
    return {
        "requests": r["requests"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50": r["p50_us"] / 1000,
        "p95": r["p95_us"] / 1000,
        "p99": r["p99_us"] / 1000,
        "mean": r["mean_us"] / 1000,
        "max": r["max_us"] / 1000,
    }


TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process still alive, in clock ticks."""
    ticks = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def children(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                pids.append(int(stat.parent.name))
    return pids


def backends() -> list[int]:
    """The PostgreSQL backends connected to the scratch database (the server's)."""
    with psycopg.connect(settings.DATABASE_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            [NAME],
        ).fetchall()
    return [pid for (pid,) in rows]


class CpuMeter:
    """CPU time the server spends: its gunicorn workers, and the PostgreSQL backends of the
    scratch database (Redis is the dev stack's, shared, and not counted). Less sensitive to
    a busy machine than requests per second."""

    def __init__(self, server: subprocess.Popen[bytes]) -> None:
        self.server = server

    def snapshot(self) -> tuple[dict[int, int], dict[int, int]]:
        return cpu_ticks(children(self.server.pid)), cpu_ticks(backends())

    @staticmethod
    def spent(before: dict[int, int], after: dict[int, int]) -> float:
        # A process that started during the run counts from zero; one that ended is lost
        # (the server keeps its connections for the whole run: DATABASE_CONN_MAX_AGE).
        return sum(t - before.get(pid, 0) for pid, t in after.items()) * TICK_MS


def measure(
    base: str, items_file: Path, seconds: int, mean_delay_ms: float, meter: CpuMeter
) -> dict[str, Any]:
    app_before, db_before = meter.snapshot()
    result = wrk(base, items_file, seconds, mean_delay_ms)
    app_after, db_after = meter.snapshot()
    result["cpu_app"] = meter.spent(app_before, app_after) / result["requests"]
    result["cpu_db"] = meter.spent(db_before, db_after) / result["requests"]
    result["cpu"] = result["cpu_app"] + result["cpu_db"]
    return result


def alternate(
    base: str, files: dict[str, Path], mean_delay_ms: float, label: str, meter: CpuMeter
) -> list[dict[str, dict[str, Any]]]:
    rounds = []
    for n in range(ROUNDS):
        order = ("plain", "machinery") if n % 2 == 0 else ("machinery", "plain")
        pair = {}
        for side in order:
            r = pair[side] = measure(base, files[side], DURATION_S, mean_delay_ms, meter)
            print(
                f"[bench]   {label} round {n + 1} {side:9}: {r['rps']:7.1f} rps, "
                f"p50 {r['p50']:.2f} ms, p95 {r['p95']:.2f} ms, p99 {r['p99']:.2f} ms, "
                f"CPU {r['cpu']:.2f} ms/request ({r['cpu_app']:.2f} app + {r['cpu_db']:.2f} db)",
                flush=True,
            )
        rounds.append(pair)
    return rounds


def med(rounds: list[dict[str, dict[str, Any]]], side: str, key: str) -> float:
    return statistics.median(r[side][key] for r in rounds)


def forget_redis_keys(tenant_ids: set[str]) -> int:
    """Delete what the run left in the server's Redis database: keys tagged {tenant_id}."""
    import redis

    client = redis.Redis.from_url(redis_url(REDIS_DB))
    tag = re.compile(rb"\{([0-9a-f-]{36})\}")
    doomed = [
        key
        for key in client.scan_iter(count=1000)
        if (m := tag.search(key)) and m[1].decode() in tenant_ids
    ]
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start : start + 500])
    client.close()
    return len(doomed)


# --------------------------------------------------------------------------- run


def run() -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError(
            "bench.machinery needs wrk: `apt-get install wrk` (Debian's package; "
            "`make bench` installs it)."
        )
    runtime_role = connection.settings_dict["USER"]
    workdir = Path(tempfile.mkdtemp(prefix="playbook-bench-machinery-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issuer = f"{base}/idp"
    load_before = os.getloadavg()[0]
    tenant_ids: set[str] = set()
    try:
        with scratch_database():
            identities, load_s = load(runtime_role, issuer)
            tenant_ids = {t for t, _ in identities}
            key_file, pem, kid = make_signing_key(workdir)
            rng = random.Random(9)
            rng.shuffle(identities)
            items = [
                (
                    f"/bench/plain/{tenant}/conversations/",
                    "/bench/machinery/conversations/",
                    mint(pem, kid, issuer, tenant, subject),
                )
                for tenant, subject in identities
            ]
            files = {"plain": workdir / "plain.txt", "machinery": workdir / "machinery.txt"}
            files["plain"].write_text("".join(f"{p}\n" for p, _, _ in items))
            files["machinery"].write_text("".join(f"{m}\t{t}\n" for _, m, t in items))
            connection.close()
            server = start_server(port, server_env(port, key_file), workdir / "gunicorn.log")
            try:
                warm = warm_up(base, items)
                for side in ("plain", "machinery"):
                    wrk(base, files[side], WARMUP_S)
                meter = CpuMeter(server)
                saturated = alternate(base, files, 0.0, "saturated", meter)
                paced_rps = PACED_LOAD * min(med(saturated, s, "rps") for s in files)
                mean_delay_ms = CONNECTIONS * 1000 / paced_rps
                paced = alternate(base, files, mean_delay_ms, "paced", meter)
            except BaseException:
                print(f"[bench] the end of gunicorn's log:\n{tail_of(workdir / 'gunicorn.log')}")
                raise
            finally:
                stop_server(server)
    finally:
        with contextlib.suppress(Exception):
            forget_redis_keys(tenant_ids)
        shutil.rmtree(workdir, ignore_errors=True)

    ratios = [r["machinery"]["rps"] / r["plain"]["rps"] for r in saturated]
    every = saturated + paced
    cpu_ratios = [r["plain"]["cpu"] / r["machinery"]["cpu"] for r in every]
    overheads = [r["machinery"]["p95"] - r["plain"]["p95"] for r in paced]
    overheads_p50 = [r["machinery"]["p50"] - r["plain"]["p50"] for r in paced]
    saturated_overheads = [r["machinery"]["p95"] - r["plain"]["p95"] for r in saturated]
    ratio = statistics.median(ratios)
    overhead = statistics.median(overheads)
    out: dict[str, Any] = {
        "machinery_tenants": TENANTS,
        "machinery_rows_per_tenant": ROWS_PER_TENANT,
        "machinery_load_s": round(load_s, 1),
        "machinery_server": f"gunicorn {WORKERS} workers x {THREADS} threads",
        "machinery_connections": CONNECTIONS,
        "machinery_rounds": ROUNDS,
        "machinery_seconds_per_run": DURATION_S,
        "machinery_warmup_requests": warm,
        "machinery_loadavg_before": round(load_before, 2),
        "machinery_requests": sum(r[s]["requests"] for r in saturated + paced for s in r),
        "machinery_non_200": 0,  # any other status fails the run
        "machinery_paced_offered_rps": round(paced_rps, 1),
    }
    for rounds, prefix in ((saturated, ""), (paced, "paced_")):
        for side, name in (("plain", "machinery_plain"), ("machinery", "machinery")):
            out[f"{name}_{prefix}rps"] = round(med(rounds, side, "rps"), 1)
            for p in ("p50", "p95", "p99"):
                out[f"{name}_{prefix}{p}_ms"] = round(med(rounds, side, p), 2)
            out[f"{name}_{prefix}rps_rounds"] = [round(r[side]["rps"], 1) for r in rounds]
            out[f"{name}_{prefix}p95_ms_rounds"] = [round(r[side]["p95"], 2) for r in rounds]
    out.update(
        {
            "machinery_throughput_ratio": round(ratio, 3),
            "machinery_throughput_ratio_rounds": [round(x, 3) for x in ratios],
            "machinery_throughput_target_met": ratio >= TARGET_THROUGHPUT_RATIO,
            "machinery_overhead_p95_ms": round(overhead, 2),
            "machinery_overhead_p95_ms_rounds": [round(x, 2) for x in overheads],
            "machinery_overhead_p50_ms": round(statistics.median(overheads_p50), 2),
            "machinery_overhead_target_met": overhead < TARGET_OVERHEAD_P95_MS,
            "machinery_plain_cpu_ms_per_request": round(med(every, "plain", "cpu"), 2),
            "machinery_cpu_ms_per_request": round(med(every, "machinery", "cpu"), 2),
            "machinery_plain_cpu_app_ms_per_request": round(med(every, "plain", "cpu_app"), 2),
            "machinery_cpu_app_ms_per_request": round(med(every, "machinery", "cpu_app"), 2),
            "machinery_plain_cpu_db_ms_per_request": round(med(every, "plain", "cpu_db"), 2),
            "machinery_cpu_db_ms_per_request": round(med(every, "machinery", "cpu_db"), 2),
            "machinery_cpu_ratio": round(statistics.median(cpu_ratios), 3),
            "machinery_saturated_overhead_p95_ms": round(statistics.median(saturated_overheads), 2),
        }
    )
    return out


TABLE = [
    ("machinery_server", "machinery bench: server (loopback, wrk, 8 connections)", ""),
    ("machinery_plain_rps", "plain list, saturated, requests/s", ""),
    ("machinery_rps", "full chain, saturated, requests/s", ""),
    ("machinery_throughput_ratio", "throughput ratio chain/plain (target >= 0.85)", "x"),
    ("machinery_plain_p50_ms", "plain list, saturated, p50", "ms"),
    ("machinery_plain_p95_ms", "plain list, saturated, p95", "ms"),
    ("machinery_plain_p99_ms", "plain list, saturated, p99", "ms"),
    ("machinery_p50_ms", "full chain, saturated, p50", "ms"),
    ("machinery_p95_ms", "full chain, saturated, p95", "ms"),
    ("machinery_p99_ms", "full chain, saturated, p99", "ms"),
    ("machinery_paced_offered_rps", "paced load for both (half the slower rate), requests/s", ""),
    ("machinery_plain_paced_p50_ms", "plain list, paced, p50", "ms"),
    ("machinery_plain_paced_p95_ms", "plain list, paced, p95", "ms"),
    ("machinery_plain_paced_p99_ms", "plain list, paced, p99", "ms"),
    ("machinery_paced_p50_ms", "full chain, paced, p50", "ms"),
    ("machinery_paced_p95_ms", "full chain, paced, p95", "ms"),
    ("machinery_paced_p99_ms", "full chain, paced, p99", "ms"),
    ("machinery_overhead_p95_ms", "chain overhead at p95, paced (target < 5 ms)", "ms"),
    ("machinery_saturated_overhead_p95_ms", "p95 difference when saturated (queueing)", "ms"),
    ("machinery_plain_cpu_ms_per_request", "plain list, server CPU per request (app + db)", "ms"),
    ("machinery_cpu_ms_per_request", "full chain, server CPU per request (app + db)", "ms"),
    ("machinery_cpu_ratio", "CPU per request, plain/chain (throughput ratio, idle machine)", "x"),
    ("machinery_non_200", "machinery bench: responses other than 200", ""),
]
