"""Mixed API traffic from many tenants against the real app; every response is checked.

    run_load(LoadConfig.from_env()) -> LoadResult

1. Starts the app as the browser tests do (tests/e2e/harness.start_app): a fresh database
   `load_<runtime database>`, migrated; gunicorn and a Celery worker on a free loopback port,
   Redis index 9 of the developer's server, a queue of its own. JWTs come from an issuer of
   the run's own (tests/reliability/identity.py), configured as the app's OIDC issuer.
2. Creates the tenants with the product's actions, in the app's environment
   (tests/reliability/load_setup.py): owner, consultant, one client per virtual user, a
   conversation each, a write-scoped API key, a playbook document.
3. Runs `users` virtual users for `duration` seconds. Each is bound to one tenant (round
   robin) and to one client of it, and in a loop picks a weighted action, each with the
   credential it needs: the client's JWT (conversations, questions that start agent runs,
   polling runs, reading the thread), the consultant's JWT (review queue and decisions,
   documents, runs), the owner's JWT (usage, audit log, API keys) or the partner API key.
   Between actions it thinks for `think` seconds on average (uniform 0.5x to 1.5x).
4. Checks every response: its status is the one the action expects (a 429 only where the
   limiter may answer it, a client's question, and only with `Retry-After`; a 409 only for a
   decision another virtual user made first), and no id of another tenant is in its body
   (tests/reliability/leaks.py: every tenant's ids from the database at setup, ids first
   seen in a tenant's responses learned as its own).
5. After the run (and a drain of the agent runs still queued): what each tenant's responses
   showed is compared with what each tenant owns in the database; cross-tenant consistency
   of usage, messages, runs and audit events is checked with SQL as the administrator; each
   tenant's audit chain is verified with `manage.py audit_verify`.

Why a small threaded driver rather than locust: the checks need shared state across users
(who owns which id, learned as the run goes) and an end-of-run comparison with the database,
which is plain Python here; locust would add gevent's monkey-patching to the pytest process
(and to psycopg, whose connections the suite's other tests use), a web UI and a dependency
tree for what is, at 50 users, a loop of `requests` calls. Threads are enough: the users
spend their time waiting for the server or thinking, not computing.

Environment: LOAD_DURATION (seconds, default 60), LOAD_USERS (20), LOAD_TENANTS (6),
LOAD_THINK (1.0 s), LOAD_TIGHT_TENANTS (1: tenants whose per-user limit is 2 a minute, so
their questions meet intended 429s), LOAD_WEB_WORKERS (2), LOAD_WEB_THREADS (4),
LOAD_WORKER_CONCURRENCY (2), LOAD_DRAIN (90 s), LOAD_SEED.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import secrets
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from tests.e2e.harness import E2EApp, manage, start_app, stop_app
from tests.reliability.identity import LocalIssuer
from tests.reliability.leaks import IdLedger, Leak, TenantRows

REDIS_DB = 9  # the load app's Redis index (the browser tests use 7, development 0)
REQUEST_TIMEOUT = 30.0
QUESTIONS = [
    "How should I structure the agenda for my first board meeting?",
    "Should we price the new retainer by the hour or by outcome?",
    "Which three metrics should we review every quarter?",
    "What should the scorecard for a head of sales look like?",
    "How do I prepare the board pack?",
    "How often should we revisit our prices?",
]


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class LoadConfig:
    duration: float = 60.0
    users: int = 20
    tenants: int = 6
    think: float = 1.0
    tight: int = 1
    web_workers: int = 2
    web_threads: int = 4
    worker_concurrency: int = 2
    drain: float = 90.0
    seed: int = 9

    @classmethod
    def from_env(cls) -> LoadConfig:
        return cls(
            duration=_env("LOAD_DURATION", cls.duration),
            users=int(_env("LOAD_USERS", cls.users)),
            tenants=int(_env("LOAD_TENANTS", cls.tenants)),
            think=_env("LOAD_THINK", cls.think),
            tight=int(_env("LOAD_TIGHT_TENANTS", cls.tight)),
            web_workers=int(_env("LOAD_WEB_WORKERS", cls.web_workers)),
            web_threads=int(_env("LOAD_WEB_THREADS", cls.web_threads)),
            worker_concurrency=int(_env("LOAD_WORKER_CONCURRENCY", cls.worker_concurrency)),
            drain=_env("LOAD_DRAIN", cls.drain),
            seed=int(_env("LOAD_SEED", cls.seed)),
        )


# --------------------------------------------------------------------------- recording


@dataclass
class Problem:
    action: str
    request: str
    status: int | str
    detail: str

    def __str__(self) -> str:
        return f"{self.action}: {self.request} -> {self.status} {self.detail[:300]}"


@dataclass
class Recorder:
    """Every request's action, status and latency; what went wrong, in full."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    by_action: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[int | str] = field(default_factory=Counter)
    errors: list[Problem] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)
    intended_429: int = 0
    conflicts: int = 0  # 409s of decisions another user made first
    started: float = 0.0
    finished: float = 0.0

    def record(self, action: str, status: int | str, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.by_action[action].append(seconds)
            self.statuses[status] += 1

    def error(self, problem: Problem) -> None:
        with self.lock:
            self.errors.append(problem)

    def leak(self, found: list[Leak]) -> None:
        with self.lock:
            self.leaks.extend(found)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --------------------------------------------------------------------------- tenants


@dataclass
class Tenant:
    tenant_id: str
    slug: str
    tight: bool
    tokens: dict[str, str]  # "owner", "consultant", "client0"... -> JWT
    api_key: str
    clients: list[dict[str, Any]]
    rows: TenantRows


def setup_tenants(app: E2EApp, config: LoadConfig, issuer: LocalIssuer) -> list[Tenant]:
    clients = max(1, math.ceil(config.users / config.tenants))
    script = (
        "from tests.reliability.load_setup import build_tenants; "
        f"build_tenants(count={config.tenants}, clients={clients}, "
        f"issuer={issuer.issuer!r}, tight={config.tight})"
    )
    output = manage(app, "shell", "-c", script, timeout=600)
    specs = json.loads(output.strip().splitlines()[-1])["tenants"]
    lifetime = int(config.duration + config.drain + 3600)
    tenants = []
    for spec in specs:
        people = [spec["owner"], spec["consultant"], *spec["clients"]]
        tokens = {
            person["subject"].removeprefix(f"{spec['slug']}-"): issuer.token(
                subject=person["subject"],
                tenant_id=spec["tenant_id"],
                role=person["role"],
                lifetime=lifetime,
            )
            for person in people
        }
        tenants.append(
            Tenant(
                tenant_id=spec["tenant_id"],
                slug=spec["slug"],
                tight=spec["tight"],
                tokens=tokens,
                api_key=spec["api_key"],
                clients=spec["clients"],
                rows=TenantRows.from_json(spec["rows"]),
            )
        )
    return tenants


# --------------------------------------------------------------------------- virtual users


class VirtualUser:
    """One person's session against one tenant: a loop of weighted actions."""

    def __init__(
        self,
        index: int,
        tenant: Tenant,
        client_no: int,
        base_url: str,
        recorder: Recorder,
        ledger: IdLedger,
        config: LoadConfig,
    ) -> None:
        self.index = index
        self.tenant = tenant
        self.client_no = client_no
        client = tenant.clients[client_no]
        self.conversations: list[str] = [client["conversation"]]
        self.runs: list[str] = []
        self.base_url = base_url
        self.recorder = recorder
        self.ledger = ledger
        self.config = config
        self.rng = random.Random(config.seed * 1000 + index)
        self.session = requests.Session()
        self.actions: list[tuple[Callable[[], None], int]] = [
            (self.client_lists_conversations, 8),
            (self.client_reads_thread, 8),
            (self.client_asks, 10),
            (self.client_polls_run, 10),
            (self.client_opens_conversation, 2),
            (self.consultant_decides, 10),
            (self.consultant_lists_conversations, 4),
            (self.consultant_lists_runs, 4),
            (self.consultant_lists_documents, 3),
            (self.consultant_uploads_document, 1),
            (self.owner_reads_usage, 3),
            (self.owner_reads_audit_log, 3),
            (self.owner_lists_api_keys, 1),
            (self.partner_lists_conversations, 3),
            (self.partner_lists_documents, 2),
            (self.partner_lists_runs, 2),
            (self.partner_reads_registry, 2),
            (self.partner_uploads_document, 1),
        ]

    # -- plumbing

    def token(self, who: str) -> str:
        if who == "partner":
            return self.tenant.api_key
        if who == "client":
            who = f"client{self.client_no}"
        return self.tenant.tokens[who]

    def call(
        self,
        action: str,
        who: str,
        method: str,
        path: str,
        *,
        expect: int = 200,
        tolerate: dict[int, str] | None = None,
        json_body: Any = None,
        files: Any = None,
    ) -> Any:
        """One request, checked; the response's JSON when its status is the expected one.

        `tolerate` names the other statuses this action may meet by design, each with the
        error `code` its body must carry (a 429 also needs `Retry-After`)."""
        headers = {"Authorization": f"Bearer {self.token(who)}"}
        label = f"{method} {path}"
        started = time.perf_counter()
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                headers=headers,
                json=json_body,
                files=files,
                timeout=REQUEST_TIMEOUT,
            )
        except requests.RequestException as exc:
            self.recorder.record(action, "transport", time.perf_counter() - started)
            self.recorder.error(Problem(action, label, "transport", repr(exc)))
            return None
        status = response.status_code
        self.recorder.record(action, status, time.perf_counter() - started)
        if status != expect and not self.tolerated(response, tolerate or {}):
            self.recorder.error(Problem(action, label, status, response.text))
        sent = f"{path} {json.dumps(json_body) if json_body is not None else ''}"
        leaks = self.ledger.foreign(self.tenant.tenant_id, response.content, sent, learn=True)
        if leaks:
            self.recorder.leak(leaks)
            self.recorder.error(Problem(action, label, status, "; ".join(map(str, leaks[:3]))))
        if status == expect and response.content:
            with contextlib.suppress(ValueError):
                return response.json()
        return None

    def tolerated(self, response: requests.Response, tolerate: dict[int, str]) -> bool:
        code = tolerate.get(response.status_code)
        if code is None:
            return False
        try:
            if response.json().get("code") != code:
                return False
        except ValueError:
            return False
        if response.status_code == 429:
            if not response.headers.get("Retry-After", "").isdigit():
                return False
            with self.recorder.lock:
                self.recorder.intended_429 += 1
        else:
            with self.recorder.lock:
                self.recorder.conflicts += 1
        return True

    def run(self, deadline: float) -> None:
        functions = [f for f, _ in self.actions]
        weights = [w for _, w in self.actions]
        # Users do not all start in the same instant.
        time.sleep(self.rng.uniform(0, self.config.think))
        while time.monotonic() < deadline:
            self.rng.choices(functions, weights)[0]()
            time.sleep(self.config.think * self.rng.uniform(0.5, 1.5))
        self.session.close()

    # -- the client

    def client_lists_conversations(self) -> None:
        page = self.call("client: conversations", "client", "GET", "/api/v1/conversations/")
        if page:
            for row in page["results"]:
                if row["id"] not in self.conversations:
                    self.conversations.append(row["id"])

    def client_reads_thread(self) -> None:
        conversation = self.rng.choice(self.conversations)
        self.call(
            "client: thread", "client", "GET", f"/api/v1/conversations/{conversation}/messages/"
        )

    def client_asks(self) -> None:
        conversation = self.rng.choice(self.conversations)
        posted = self.call(
            "client: ask",
            "client",
            "POST",
            f"/api/v1/conversations/{conversation}/messages/",
            expect=201,
            tolerate={429: "rate_limited"},
            json_body={"body": self.rng.choice(QUESTIONS)},
        )
        if posted and posted.get("agent_run"):
            self.runs.append(posted["agent_run"])

    def client_polls_run(self) -> None:
        if not self.runs:
            return self.client_asks()
        run = self.runs[-1] if self.rng.random() < 0.7 else self.rng.choice(self.runs)
        self.call("client: run", "client", "GET", f"/api/v1/agent-runs/{run}/")
        return None

    def client_opens_conversation(self) -> None:
        opened = self.call(
            "client: new conversation",
            "client",
            "POST",
            "/api/v1/conversations/",
            expect=201,
            json_body={"title": f"Question {self.rng.randrange(10_000)}"},
        )
        if opened:
            self.conversations.append(opened["id"])

    # -- the consultant

    def consultant_decides(self) -> None:
        queue = self.call("consultant: queue", "consultant", "GET", "/api/v1/review-queue/")
        if not queue or not queue["results"]:
            return
        draft = self.rng.choice(queue["results"])
        decision = self.rng.choices(["approve", "edit", "override", "reject"], [6, 2, 1, 1])[0]
        body = {"text": f"{draft['body']}\n\nChecked by your consultant.", "note": "Load test"}
        # Another user of the tenant may have decided it first: that is a 409, as designed.
        self.call(
            f"consultant: {decision}",
            "consultant",
            "POST",
            f"/api/v1/review-queue/{draft['id']}/{decision}/",
            tolerate={409: "review_conflict"},
            json_body=body if decision != "approve" else None,
        )

    def consultant_lists_conversations(self) -> None:
        self.call("consultant: conversations", "consultant", "GET", "/api/v1/conversations/")

    def consultant_lists_runs(self) -> None:
        self.call("consultant: runs", "consultant", "GET", "/api/v1/agent-runs/")

    def consultant_lists_documents(self) -> None:
        page = self.call("consultant: documents", "consultant", "GET", "/api/v1/documents/")
        if page and page["results"]:
            document = self.rng.choice(page["results"])
            self.call(
                "consultant: document",
                "consultant",
                "GET",
                f"/api/v1/documents/{document['id']}/",
            )

    def _upload(self, action: str, who: str) -> None:
        n = self.rng.randrange(1_000_000)
        text = f"# Note {n}\n\nAnswer every client within two working days. Ref {n}.\n"
        self.call(
            action,
            who,
            "POST",
            "/api/v1/documents/",
            expect=201,
            files={"file": (f"note-{n}.md", text.encode(), "text/markdown")},
        )

    def consultant_uploads_document(self) -> None:
        self._upload("consultant: upload", "consultant")

    # -- the owner

    def owner_reads_usage(self) -> None:
        self.call("owner: usage", "owner", "GET", "/api/v1/usage/")

    def owner_reads_audit_log(self) -> None:
        self.call("owner: audit log", "owner", "GET", "/api/v1/audit/events/")

    def owner_lists_api_keys(self) -> None:
        self.call("owner: api keys", "owner", "GET", "/api/v1/api-keys/")

    # -- the partner integration (write-scoped API key)

    def partner_lists_conversations(self) -> None:
        self.call("partner: conversations", "partner", "GET", "/api/v1/conversations/")

    def partner_lists_documents(self) -> None:
        self.call("partner: documents", "partner", "GET", "/api/v1/documents/")

    def partner_lists_runs(self) -> None:
        self.call("partner: runs", "partner", "GET", "/api/v1/agent-runs/")

    def partner_reads_registry(self) -> None:
        self.call("partner: registry", "partner", "GET", "/api/v1/registry/")

    def partner_uploads_document(self) -> None:
        self._upload("partner: upload", "partner")


# --------------------------------------------------------------------------- the database


CONSISTENCY_SQL = {
    "usage events whose agent run is another tenant's": """
        SELECT count(*) FROM billing_usageevent u JOIN agents_agentrun r ON r.id = u.agent_run_id
        WHERE u.tenant_id <> r.tenant_id""",
    "usage events whose user is another tenant's": """
        SELECT count(*) FROM billing_usageevent u JOIN accounts_user p ON p.id = u.user_id
        WHERE u.tenant_id IS DISTINCT FROM p.tenant_id""",
    "agent runs answered without a usage event": """
        SELECT count(*) FROM agents_agentrun r
        WHERE r.status IN ('awaiting_review', 'completed')
          AND NOT EXISTS (SELECT 1 FROM billing_usageevent u WHERE u.agent_run_id = r.id)""",
    "messages in another tenant's conversation": """
        SELECT count(*) FROM conversations_message m
        JOIN conversations_conversation c ON c.id = m.conversation_id
        WHERE m.tenant_id <> c.tenant_id""",
    "agent runs of another tenant's conversation": """
        SELECT count(*) FROM agents_agentrun r
        JOIN conversations_conversation c ON c.id = r.conversation_id
        WHERE r.tenant_id <> c.tenant_id""",
    "audit events naming another tenant's agent run": """
        SELECT count(*) FROM audit_auditevent a
        JOIN agents_agentrun r ON r.id::text = a.agent_run_id
        WHERE a.agent_run_id <> '' AND a.tenant_id <> r.tenant_id""",
    "conversations whose client is another tenant's": """
        SELECT count(*) FROM conversations_conversation c JOIN accounts_user p ON p.id = c.client_id
        WHERE c.tenant_id IS DISTINCT FROM p.tenant_id""",
}


def consistency_problems(database: str) -> dict[str, int]:
    """Cross-tenant consistency, checked as the administrator (row-level security would hide
    the other side of each join from the runtime role)."""
    admin = os.environ["DATABASE_ADMIN_URL"]
    conninfo = psycopg.conninfo.make_conninfo(admin, dbname=database)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        counts = {}
        for name, query in CONSISTENCY_SQL.items():
            row = conn.execute(query).fetchone()
            counts[name] = int(row[0]) if row else 0
    return counts


def manage_json(app: E2EApp, call: str, timeout: float = 300) -> Any:
    script = f"from tests.reliability.load_setup import *; {call}"
    return json.loads(manage(app, "shell", "-c", script, timeout=timeout).strip().splitlines()[-1])


# --------------------------------------------------------------------------- the run


@dataclass
class LoadResult:
    config: LoadConfig
    log_dir: Path
    recorder: Recorder
    tenants: list[Tenant]
    leaks_in_database: list[Leak]
    consistency: dict[str, int]
    runs: Counter[str]
    pending_after_drain: int  # runs of the tenants with the normal limits
    pending_tight: int  # runs of the tight tenants, possibly waiting out their rate limit
    audit: dict[str, str]
    log_errors: list[str]

    def problems(self) -> list[str]:
        """Every way the run fell short of "zero errors other than intended 429s, zero
        cross-tenant rows"; empty when it did not."""
        r = self.recorder
        found = []
        if self.requests < self.config.users * 5:
            found.append(f"only {self.requests} requests")
        if r.errors:
            found.append(f"{len(r.errors)} unexpected responses or transport errors")
        if self.cross_tenant_hits:
            found.append(f"{self.cross_tenant_hits} cross-tenant ids")
        found += [f"{n} {what}" for what, n in self.consistency.items() if n]
        found += [f"audit log of {slug}: {v}" for slug, v in self.audit.items() if v != "ok"]
        if self.runs["failed"]:
            found.append(f"{self.runs['failed']} failed agent runs")
        if not self.runs["awaiting_review"] + self.runs["completed"]:
            found.append("no agent run answered")
        if self.pending_after_drain:
            found.append(f"{self.pending_after_drain} agent runs unanswered after the drain")
        if self.config.tight and not r.intended_429:
            found.append("no intended 429 from the tight tenants")
        if self.log_errors:
            found.append(f"{len(self.log_errors)} errors in the web and worker logs")
        return found

    @property
    def requests(self) -> int:
        return len(self.recorder.latencies)

    @property
    def seconds(self) -> float:
        return self.recorder.finished - self.recorder.started

    @property
    def cross_tenant_hits(self) -> int:
        return len(self.recorder.leaks) + len(self.leaks_in_database)

    def summary(self) -> str:
        r, c = self.recorder, self.config
        lines = [
            f"Load: {c.users} virtual users over {c.tenants} tenants ({c.tight} with a tight "
            f"per-user limit), {self.seconds:.0f} s, think {c.think:g} s; gunicorn "
            f"{c.web_workers}x{c.web_threads}, Celery worker concurrency {c.worker_concurrency}",
            f"requests {self.requests}, {self.requests / max(self.seconds, 1e-9):.1f}/s; "
            f"latency p50 {percentile(r.latencies, 50) * 1000:.0f} ms, "
            f"p95 {percentile(r.latencies, 95) * 1000:.0f} ms, "
            f"p99 {percentile(r.latencies, 99) * 1000:.0f} ms, "
            f"max {max(r.latencies, default=0) * 1000:.0f} ms",
            "statuses " + ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items(), key=str)),
            f"intended 429s (rate_limited, with Retry-After) {r.intended_429}; 409s of drafts "
            f"decided by another user first {r.conflicts}; errors {len(r.errors)}; "
            f"cross-tenant hits {self.cross_tenant_hits} "
            f"(in responses {len(r.leaks)}, against the database {len(self.leaks_in_database)})",
            "agent runs "
            + ", ".join(f"{k}: {v}" for k, v in sorted(self.runs.items()))
            + f"; still queued or running after the drain: {self.pending_after_drain} "
            f"(and {self.pending_tight} of the tight tenants)",
            "database: "
            + "; ".join(f"{name}: {count}" for name, count in self.consistency.items()),
            "audit chains: "
            + (
                "all verified"
                if all(v == "ok" for v in self.audit.values())
                else "; ".join(f"{k}: {v}" for k, v in self.audit.items() if v != "ok")
            ),
            f"errors in the web and worker logs: {len(self.log_errors)}",
            "by action (n, p50 ms, p95 ms):",
        ]
        for action, values in sorted(r.by_action.items()):
            lines.append(
                f"  {action:<28} {len(values):>6} {percentile(values, 50) * 1000:>7.0f} "
                f"{percentile(values, 95) * 1000:>7.0f}"
            )
        for problem in r.errors[:20]:
            lines.append(f"  ERROR {problem}")
        for leak in [*r.leaks, *self.leaks_in_database][:20]:
            lines.append(f"  LEAK {leak}")
        for line in self.log_errors[:10]:
            lines.append(f"  LOG {line}")
        problems = self.problems()
        lines.append("PROBLEMS: " + "; ".join(problems) if problems else "no problem found")
        if problems:
            lines.append(f"The app's logs are kept in {self.log_dir}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        r = self.recorder
        return {
            "users": self.config.users,
            "tenants": self.config.tenants,
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "rps": round(self.requests / max(self.seconds, 1e-9), 2),
            "p50_ms": round(percentile(r.latencies, 50) * 1000, 1),
            "p95_ms": round(percentile(r.latencies, 95) * 1000, 1),
            "p99_ms": round(percentile(r.latencies, 99) * 1000, 1),
            "statuses": {str(k): v for k, v in r.statuses.items()},
            "intended_429": r.intended_429,
            "review_conflicts": r.conflicts,
            "errors": len(r.errors),
            "cross_tenant_hits": self.cross_tenant_hits,
            "agent_runs": dict(self.runs),
            "pending_after_drain": self.pending_after_drain,
            "pending_tight": self.pending_tight,
            "consistency": self.consistency,
            "log_errors": len(self.log_errors),
        }


@contextlib.contextmanager
def load_app(config: LoadConfig, issuer: LocalIssuer) -> Iterator[E2EApp]:
    """The app, stopped (and its database dropped) at the end; its logs stay in `log_dir`."""
    app = start_app(
        prefix="load",
        redis_db=REDIS_DB,
        seed=False,
        extra_env={
            "OIDC_ISSUER": issuer.issuer,
            "OIDC_OP_JWKS_ENDPOINT": issuer.jwks_url,
            # As the Procfile runs it: idle keep-alive connections are closed after 5 s, not
            # gunicorn's default 2 s (which a user thinking under load may outlast, and then
            # reuse a connection the server is closing: a reset, not an answer).
            "GUNICORN_CMD_ARGS": "--keep-alive 5",
        },
        web_workers=config.web_workers,
        web_threads=config.web_threads,
        worker_concurrency=config.worker_concurrency,
    )
    try:
        yield app
    finally:
        stop_app(app)


def logged_errors(app: E2EApp) -> list[str]:
    """Errors and tracebacks in the web server's and the worker's logs (a 5xx the driver saw,
    but also a failure after the response, in an on-commit hook or a task)."""
    found = []
    for name, log in (("web", app.web_log), ("worker", app.worker_log)):
        for line in log.read_text(errors="replace").splitlines():
            if " ERROR " in line or line.startswith("Traceback") or "CRITICAL" in line:
                found.append(f"{name}: {line}")
    return found


def run_load(config: LoadConfig) -> LoadResult:
    """The whole run; the app's logs are deleted when it found no problem, else kept (and
    named in the summary)."""
    issuer = LocalIssuer(issuer=f"https://load-{secrets.token_hex(4)}.reliability.test")
    log_dir = None
    try:
        with load_app(config, issuer) as app:
            log_dir = app.log_dir
            result = _run(app, config, issuer)
    except BaseException:
        if log_dir is not None:
            print(f"\nThe load app's logs are kept in {log_dir}")
        raise
    finally:
        issuer.close()
    if not result.problems():
        shutil.rmtree(result.log_dir, ignore_errors=True)
    return result


def _run(app: E2EApp, config: LoadConfig, issuer: LocalIssuer) -> LoadResult:
    tenants = setup_tenants(app, config, issuer)
    ledger = IdLedger(t.rows for t in tenants)
    recorder = Recorder()
    # User i: tenant i mod T, that tenant's client i div T (each user is its own person).
    users = [
        VirtualUser(
            i, tenants[i % len(tenants)], i // len(tenants), app.url, recorder, ledger, config
        )
        for i in range(config.users)
    ]
    recorder.started = time.monotonic()
    deadline = recorder.started + config.duration
    threads = [
        threading.Thread(target=user.run, args=(deadline,), name=f"vu-{user.index}", daemon=True)
        for user in users
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=config.duration + REQUEST_TIMEOUT * 3)
    recorder.finished = time.monotonic()

    # Questions accepted near the end are still being answered: give the worker time. The
    # tight tenants' runs may wait out their rate limit (the task retries with backoff).
    slugs = [t.slug for t in tenants]
    loose = [t.slug for t in tenants if not t.tight]
    drain_deadline = time.monotonic() + config.drain
    pending = manage_json(app, f"pending_runs(slugs={slugs!r})")
    while sum(pending[s] for s in loose) and time.monotonic() < drain_deadline:
        time.sleep(3)
        pending = manage_json(app, f"pending_runs(slugs={slugs!r})")

    report = manage_json(app, f"report(slugs={slugs!r})", timeout=600)
    in_database = [TenantRows.from_json(report[slug]["rows"]) for slug in slugs]
    runs: Counter[str] = Counter()
    for slug in slugs:
        runs.update(report[slug]["runs"])
    return LoadResult(
        config=config,
        log_dir=app.log_dir,
        recorder=recorder,
        tenants=tenants,
        leaks_in_database=ledger.cross_check(in_database),
        consistency=consistency_problems(app.database),
        runs=runs,
        pending_after_drain=sum(pending[s] for s in loose),
        pending_tight=sum(pending[s] for s in slugs if s not in loose),
        audit={slug: report[slug]["audit"] for slug in slugs},
        log_errors=logged_errors(app),
    )
