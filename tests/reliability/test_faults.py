"""Faults while agent runs and requests are in flight: Redis killed, PostgreSQL restarted, a
Celery worker SIGKILLed (issue 9, part 2).

Every test runs the real app in real processes (gunicorn, Celery workers) against services of
its own, which it is free to kill (tests/reliability/faultstack.py): a PostgreSQL, a broker
Redis with an fsync'd append-only file, and a separate limiter Redis without persistence. The
shared development services are never touched.

The model is the offline responder, priced (fault_setup.py), so every run makes one real,
admitted and billed model call. The workers load tests/reliability/worker_hooks.py, which
journals every admission and model call to a file (surviving a SIGKILL) and can hold a run
before its admission, inside its model call or just after it, while a test breaks something.
"Exactly once" is then checked against what really happened: one `call-done` in the journal,
one UsageEvent, one draft, one audit event per state change, and the limiter's Redis ledger
equal to PostgreSQL's sum with no reservation left open.

`-m faults` selects them all; they take about two minutes on two cores. FAULTS_OUTAGE_SECONDS
and FAULTS_ROUNDS make them longer for `make soak` (outages past the worker's patience, repeated
restarts and kills); FAULTS_KEEP_LOGS=1 keeps the services' and processes' logs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
from celery import Celery

from billing import limiter
from tests.reliability.faultstack import (
    VISIBILITY_TIMEOUT,
    FaultStack,
    Proc,
    RedisServer,
    Response,
    Session,
    Web,
    fault_stack,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.faults

# Knobs for `make soak` (the defaults are the short run of `make test`): how long a killed
# service stays down at least, and how many times a fault is repeated.
OUTAGE_S = float(os.environ.get("FAULTS_OUTAGE_SECONDS", "0"))
ROUNDS = int(os.environ.get("FAULTS_ROUNDS", "1"))

SLUGS = ("limiter", "redis", "wiped", "postgres", "prefork", "late", "solo")
# Every run of the offline responder leaves exactly these audit events (none per delivery).
RUN_AUDIT = ["agent.run_queued", "agent.draft_created"]


@dataclass(frozen=True)
class World:
    slug: str
    tenant: str
    client: int
    conversation: str
    session: Session


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    with fault_stack() as services:
        failures = request.session.testsfailed
        yield services
        services.keep_logs = request.session.testsfailed > failures


@pytest.fixture(scope="module")
def worlds(stack: FaultStack) -> dict[str, World]:
    out = stack.manage(
        "shell",
        "-c",
        f"from tests.reliability.fault_setup import main; main({list(SLUGS)!r})",
        env=stack.env("setup"),
    )
    raw = json.loads(out.strip().splitlines()[-1])
    return {
        slug: World(
            slug=slug,
            tenant=w["tenant"],
            client=w["client"],
            conversation=w["conversation"],
            session=Session(w["session"]),
        )
        for slug, w in raw.items()
    }


@pytest.fixture
def queue(stack: FaultStack) -> Iterator[str]:
    """A queue of the test's own; its processes are stopped after it."""
    yield f"faults-{uuid.uuid4().hex[:8]}"
    stack.stop_processes()


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def gate(stack: FaultStack, name: str) -> Iterator[None]:
    """Runs wait at this point (worker_hooks.wait_at_gate) until the block ends."""
    path = stack.hooks_dir / name
    path.touch()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def journal(stack: FaultStack, run: str | None = None, event: str | None = None) -> list[dict]:
    """What the workers journaled (worker_hooks.py), oldest first."""
    path = stack.hooks_dir / "journal"
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
            entries.append(json.loads(line))
    return [
        e
        for e in entries
        if (run is None or e["run"] == run) and (event is None or e["event"] == event)
    ]


def ask(web: Web, world: World, body: str) -> Response:
    return web.http(
        "POST",
        f"/api/v1/conversations/{world.conversation}/messages/",
        body={"body": body},
        session=world.session,
    )


def asked(web: Web, world: World, body: str) -> str:
    response = ask(web, world, body)
    assert response.status == 201, (response.status, response.text)
    return str(response.json()["agent_run"])


def run_row(stack: FaultStack, run: str) -> tuple[str, str]:
    [row] = stack.postgres.query("SELECT status, error FROM agents_agentrun WHERE id = %s", [run])
    return row[0], row[1]


def wait_status(
    stack: FaultStack, run: str, status: str, *, timeout: float = 45, logs: Proc | None = None
) -> None:
    try:
        wait_for(lambda: run_row(stack, run)[0] == status, timeout=timeout, what=f"{run} {status}")
    except AssertionError as exc:
        tail = f"\nworker log:\n{logs.tail(80)}" if logs else ""
        raise AssertionError(f"{exc}; run is {run_row(stack, run)}{tail}") from None


def usage_keys(stack: FaultStack, run: str) -> list[str]:
    rows = stack.postgres.query(
        "SELECT idempotency_key FROM billing_usageevent WHERE agent_run_id = %s ORDER BY 1", [run]
    )
    return [r[0] for r in rows]


def audit_actions(stack: FaultStack, run: str) -> list[str]:
    rows = stack.postgres.query(
        "SELECT action FROM audit_auditevent WHERE agent_run_id = %s ORDER BY seq", [str(run)]
    )
    return [r[0] for r in rows]


def spend_in_postgres(stack: FaultStack, world: World) -> int:
    return int(
        stack.postgres.value(
            "SELECT coalesce(sum(cost_microdollars), 0) FROM billing_usageevent "
            "WHERE tenant_id = %s",
            [world.tenant],
        )
    )


def ledger(server: RedisServer, world: World) -> tuple[int, int]:
    """The limiter's (settled spend, open reservations) of the tenant this month."""
    keys = limiter.keys(world.tenant, None, limiter.period_of())
    db = server.client()
    return int(db.get(keys["spend"]) or 0), int(db.get(keys["reserved"]) or 0)


def assert_exactly_once(
    stack: FaultStack, world: World, runs: list[str], *, lost_attempts: bool = False
) -> None:
    """Each run: one model call really made, billed once, one draft, audited once per state
    change; no task-level audit events; nothing else billed for the tenant.

    `lost_attempts`: an attempt may have died after its call returned and before it could
    commit (the database went away under it). Its call was made, but its result and its
    usage event were lost with its transaction, so the next attempt calls again, and that
    call is billed: the tenant pays once, the platform absorbs the lost call."""
    for run in runs:
        assert run_row(stack, run) == ("awaiting_review", "")
        done = journal(stack, run, "call-done")
        assert len(done) >= 1 if lost_attempts else len(done) == 1, journal(stack, run)
        assert usage_keys(stack, run) == [f"{run}:model:0"]
        assert audit_actions(stack, run) == RUN_AUDIT
        drafts = stack.postgres.value(
            "SELECT count(*) FROM conversations_message m JOIN agents_agentrun r "
            "ON r.draft_message_id = m.id WHERE r.id = %s AND m.status = 'draft'",
            [run],
        )
        assert drafts == 1
    agent_messages = stack.postgres.value(
        "SELECT count(*) FROM conversations_message WHERE tenant_id = %s AND sender = 'agent'",
        [world.tenant],
    )
    assert agent_messages == len(runs)
    billed = stack.postgres.value(
        "SELECT count(*) FROM billing_usageevent WHERE tenant_id = %s", [world.tenant]
    )
    assert billed == len(runs)
    task_events = stack.postgres.value(
        "SELECT count(*) FROM audit_auditevent WHERE tenant_id = %s AND action LIKE 'task.%%'",
        [world.tenant],
    )
    assert task_events == 0


def faults_app(stack: FaultStack) -> Celery:
    """A Celery client of the stack's broker. Not the current app: tasks the rest of the suite
    queues in this process must keep going to the suite's own broker."""
    return Celery(
        "faults", broker=stack.broker.url(), backend=stack.broker.url(), set_as_current=False
    )


def assert_audit_chain_intact(stack: FaultStack, world: World, queue: str) -> None:
    out = stack.manage("audit_verify", "--tenant", world.slug, env=stack.env(queue))
    assert "is intact" in out, out


def client_messages(stack: FaultStack, world: World, body: str) -> int:
    return int(
        stack.postgres.value(
            "SELECT count(*) FROM conversations_message WHERE tenant_id = %s AND body = %s",
            [world.tenant, body],
        )
    )


# --------------------------------------------------------------------------- 1. Redis


def test_limiter_redis_down_runs_wait_fail_closed_and_finish_once_it_is_back(
    stack: FaultStack, worlds: dict[str, World], queue: str
) -> None:
    """LIMITER_REDIS_URL is a Redis of its own, killed while one run is inside its model call
    and another is queued behind it. The broker stays up."""
    world = worlds["limiter"]
    env = stack.env(queue)
    web, worker = stack.spawn_web(env), stack.spawn_worker(env, "limiter-worker")
    wait_ready(web, worker)

    with gate(stack, "hold-call"):
        first = asked(web, world, "How do I price a retainer?")
        wait_for(lambda: journal(stack, first, "call-start"), timeout=30, what="first call")
        second = asked(web, world, "And a one-off workshop?")
        stack.limiter.kill()

        # A new question is refused at once, and not saved: the limiter cannot admit it.
        refused = ask(web, world, "Are you there?")
        assert refused.status == 503, refused.text
        assert refused.json()["code"] == "agent_unavailable"
        assert int(refused.headers["Retry-After"]) > 0
        assert client_messages(stack, world, "Are you there?") == 0
    # The first call (admitted before the outage) returns; its run finishes and is billed in
    # PostgreSQL even though its settlement cannot reach Redis.
    wait_status(stack, first, "awaiting_review", logs=worker)

    # The second run fails closed: refused by the unreachable limiter, attempt after attempt,
    # without a model call; it stays queued and says why.
    wait_for(
        lambda: len(journal(stack, second, "refused")) >= 3,
        timeout=30,
        what="the second run to be refused three times",
    )
    assert journal(stack, second, "call-start") == []
    assert usage_keys(stack, second) == []
    assert run_row(stack, second) == ("queued", "LimiterUnavailable")
    seen = web.http("GET", f"/api/v1/agent-runs/{second}/", session=world.session).json()
    assert (seen["status"], seen["error"]) == ("queued", "LimiterUnavailable")
    page = web.http(
        "GET", f"/chat/{world.conversation}/", session=world.session, accept="text/html"
    )
    assert page.status == 200
    assert 'data-run-status="waiting"' in page.text
    assert "briefly unavailable" in page.text

    # The limiter's Redis comes back empty: the spend is rebuilt from PostgreSQL and the
    # waiting run goes through at its next attempt.
    time.sleep(OUTAGE_S)
    stack.limiter.start()
    wait_status(stack, second, "awaiting_review", logs=worker)

    assert_exactly_once(stack, world, [first, second])
    assert ledger(stack.limiter, world) == (spend_in_postgres(stack, world), 0)
    assert "agent.run_failed" not in audit_actions(stack, second)


def test_whole_redis_down_broker_too_runs_finish_once_it_is_back(
    stack: FaultStack, worlds: dict[str, World], queue: str
) -> None:
    """One Redis for broker, cache and limiter (the default deployment), SIGKILLed while one
    run is inside its model call and another is about to be admitted. It restarts from its
    append-only file."""
    world = worlds["redis"]
    env = stack.env(queue, limiter_on_broker=True)
    web = stack.spawn_web(env)
    worker = stack.spawn_worker(env, "redis-worker", pool="threads", concurrency=2)
    wait_ready(web, worker)

    with gate(stack, "hold-call"):
        first = asked(web, world, "How do I price a retainer?")
        wait_for(lambda: journal(stack, first, "call-start"), timeout=30, what="first call")
        with gate(stack, "hold-admission"):
            second = asked(web, world, "And a one-off workshop?")
            wait_for(lambda: journal(stack, second, "admit"), timeout=30, what="second admit")
            stack.broker.kill()
            refused = ask(web, world, "Are you there?")
            assert refused.status == 503, refused.text
            assert refused.json()["code"] == "agent_unavailable"
            ready = web.http("GET", "/readyz")
            assert ready.status == 503
            assert ready.json()["failing"] == ["redis"]

    # The call in flight returns and its run finishes in PostgreSQL, Redis or not; the run
    # about to be admitted is refused, without a model call, and waits.
    wait_status(stack, first, "awaiting_review", logs=worker)
    wait_for(lambda: journal(stack, second, "refused"), timeout=30, what="second refused")
    wait_for(
        lambda: run_row(stack, second) == ("queued", "LimiterUnavailable"),
        timeout=30,
        what="second waiting",
    )
    assert journal(stack, second, "call-start") == []
    assert client_messages(stack, world, "Are you there?") == 0

    # Down for longer than a worker waits to queue the next attempt (a few seconds), the
    # message stays unacknowledged in Redis and is delivered again after the visibility
    # timeout, when the worker reconnects; a shorter outage is bridged by that wait.
    time.sleep(OUTAGE_S)
    stack.broker.start()
    wait_status(stack, second, "awaiting_review", timeout=60, logs=worker)
    wait_for(lambda: web.http("GET", "/readyz").status == 200, timeout=30, what="readyz")

    assert_exactly_once(stack, world, [first, second])
    # The first run's settlement was lost with Redis: the worker rebuilt the spend from
    # PostgreSQL at its next admission.
    assert ledger(stack.broker, world) == (spend_in_postgres(stack, world), 0)
    assert_audit_chain_intact(stack, world, queue)


def test_redis_back_without_its_data_lost_runs_are_queued_again_by_the_beat(
    stack: FaultStack, worlds: dict[str, World], queue: str
) -> None:
    """The broker's Redis loses everything (no persistence, a failover without replication)
    while a run's task waits in its queue. PostgreSQL still has the run, `queued`: the
    periodic sweep queues it again once it has not been tried for AGENT_RUN_STALLED_SECONDS."""
    world = worlds["wiped"]
    env = stack.env(queue, limiter_on_broker=True, AGENT_RUN_STALLED_SECONDS="2")
    web = stack.spawn_web(env)
    wait_ready(web)
    run = asked(web, world, "How do I price a retainer?")  # no worker yet: it waits in Redis
    stack.broker.kill()
    stack.broker.wipe()
    stack.broker.start()
    worker = stack.spawn_worker(env, "wiped-worker")
    wait_ready(worker)
    time.sleep(2.5)
    assert run_row(stack, run) == ("queued", "")  # its task is gone
    assert journal(stack, run) == []

    # A tick of the beat (`agents-requeue-stalled-runs`, every two minutes).
    app = faults_app(stack)
    try:
        tick = app.send_task("agents.requeue_all_stalled_runs", queue=queue)
        assert tick.get(timeout=30) >= 1
    finally:
        app.close()
    wait_status(stack, run, "awaiting_review", logs=worker)
    assert_exactly_once(stack, world, [run])
    assert ledger(stack.broker, world) == (spend_in_postgres(stack, world), 0)


# --------------------------------------------------------------------------- 2. PostgreSQL


@dataclass
class Outcome:
    kind: str
    path: str
    status: int
    headers: dict[str, str]
    body: str
    at: float
    sent: str = ""


def _load(web: Web, world: World, stop: threading.Event, out: list[Outcome], worker: int) -> None:
    pages = [
        ("api-read", f"/api/v1/conversations/{world.conversation}/messages/"),
        ("page", f"/chat/{world.conversation}/"),
        ("readyz", "/readyz"),
        ("api-write", f"/api/v1/conversations/{world.conversation}/messages/"),
    ]
    n = 0
    while not stop.is_set():
        kind, path = pages[n % len(pages)]
        sent = ""
        if kind == "api-write":
            sent = f"load {worker}-{n}"
            response = ask(web, world, sent)
        elif kind == "page":
            response = web.http("GET", path, session=world.session, accept="text/html")
        elif kind == "readyz":
            response = web.http("GET", path)  # as a load balancer probes: no cookie
        else:
            response = web.http("GET", path, session=world.session)
        out.append(
            Outcome(kind, path, response.status, response.headers, response.text, time.time(), sent)
        )
        n += 1
        time.sleep(0.05)


def _pids(proc: Proc) -> set[int]:
    parent = psutil.Process(proc.pid)
    return {parent.pid, *(child.pid for child in parent.children(recursive=True))}


def test_postgres_restart_under_load_fails_cleanly_and_recovers_by_itself(
    stack: FaultStack, worlds: dict[str, World], queue: str
) -> None:
    world = worlds["postgres"]
    env = stack.env(queue)
    web, worker = stack.spawn_web(env), stack.spawn_worker(env, "postgres-worker")
    wait_ready(web, worker)
    pids = _pids(web.proc) | _pids(worker)

    outcomes: list[Outcome] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_load, args=(web, world, stop, outcomes, i), daemon=True)
        for i in range(3)
    ]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.5)
        down_at = time.time()
        for round_ in range(ROUNDS):
            # A restart (open transactions rolled back, sessions cut), then, when repeated,
            # a crash (recovery from the WAL at the next start).
            stack.postgres.stop("fast" if round_ % 2 == 0 else "immediate")
            assert web.http("GET", "/healthz").status == 200  # the process itself is fine
            time.sleep(max(2.5, OUTAGE_S))
            stack.postgres.start()
            up_at = time.time()
            wait_for(lambda: web.http("GET", "/readyz").status == 200, timeout=30, what="readyz")
            time.sleep(1.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)

    statuses = Counter((o.kind, o.status) for o in outcomes)
    assert {o.status for o in outcomes} <= {200, 201, 503}, statuses
    assert any(o.status == 503 for o in outcomes), "the outage was not seen"
    for o in outcomes:
        assert "Traceback" not in o.body and "server_error" not in o.body, o
        if o.status != 503:
            continue
        assert down_at <= o.at, o  # nothing failed before the outage
        if o.kind == "readyz":
            # The database's checks fail (which ones depends on when the probe hit the restart).
            failing = json.loads(o.body)["failing"]
            assert failing and set(failing) <= {"database", "database_role", "migrations"}, o
            continue
        assert int(o.headers["Retry-After"]) > 0, o
        if o.kind == "page":
            assert "briefly unavailable" in o.body, o
        else:
            assert json.loads(o.body)["code"] == "service_unavailable", o
    # /readyz went 200 -> 503 -> 200 without any process being restarted.
    ready = [o.status for o in outcomes if o.kind == "readyz"]
    assert ready[0] == 200 and ready[-1] == 200 and 503 in ready, ready
    assert all(o.status != 503 for o in outcomes if o.at > up_at + 5), statuses
    assert _pids(web.proc) | _pids(worker) == pids

    # Nothing half-written: a 201 is there with its audit event and its queued run; a 503
    # left nothing behind.
    writes = [o for o in outcomes if o.kind == "api-write"]
    assert any(o.status == 201 for o in writes) and any(o.status == 503 for o in writes)
    for o in writes:
        assert client_messages(stack, world, o.sent) == (1 if o.status == 201 else 0), o
    orphans = stack.postgres.query(
        """
        SELECT m.id FROM conversations_message m
        LEFT JOIN agents_agentrun r ON r.trigger_message_id = m.id
        LEFT JOIN audit_auditevent posted
          ON posted.resource_id = m.id::text AND posted.action = 'message.posted'
        LEFT JOIN audit_auditevent queued
          ON queued.agent_run_id = r.id::text AND queued.action = 'agent.run_queued'
        WHERE m.tenant_id = %s AND m.body LIKE 'load %%'
          AND (r.id IS NULL OR posted.id IS NULL OR queued.id IS NULL)
        """,
        [world.tenant],
    )
    assert orphans == []

    # The worker recovered too: every run asked for, before, during or after the outage, is
    # answered once.
    runs = [
        str(r[0])
        for r in stack.postgres.query(
            "SELECT id FROM agents_agentrun WHERE tenant_id = %s", [world.tenant]
        )
    ]
    for run in runs:
        wait_status(stack, run, "awaiting_review", timeout=90, logs=worker)
    assert_exactly_once(stack, world, runs, lost_attempts=True)


# --------------------------------------------------------------------------- 3. SIGKILL


def nth_call(stack: FaultStack, run: str, n: int) -> list[dict]:
    """Wait for the run's n-th model call to start; every call started so far."""

    def started() -> list[dict]:
        starts = journal(stack, run, "call-start")
        return starts if len(starts) == n else []

    return list(wait_for(started, timeout=30, what=f"call {n} of {run}"))


def worker_lost(worker: Proc, times: int) -> bool:
    """The prefork worker saw `times` of its pool processes die under a task."""
    return worker.log.read_text(errors="replace").count("WorkerLostError") >= times


def _assert_killed_run_finished_once(stack: FaultStack, world: World, run: str) -> None:
    starts = journal(stack, run, "call-start")
    # Each killed call, then the one that finished, each in another process.
    assert len(starts) == ROUNDS + 1, journal(stack, run)
    assert len({s["pid"] for s in starts}) == ROUNDS + 1
    assert_exactly_once(stack, world, [run])
    # The killed attempts' reservation was taken over by the next one: none is left open.
    assert ledger(stack.limiter, world) == (spend_in_postgres(stack, world), 0)


def test_a_pool_process_killed_mid_call_is_redelivered_at_once_and_runs_once(
    stack: FaultStack, worlds: dict[str, World], queue: str
) -> None:
    """The prefork pool (production's): SIGKILL the pool process running the task. The worker
    sees it lost and puts the message back (acks_late + reject_on_worker_lost)."""
    world = worlds["prefork"]
    env = stack.env(queue)
    web, worker = stack.spawn_web(env), stack.spawn_worker(env, "prefork-worker", pool="prefork")
    wait_ready(web, worker)

    with gate(stack, "hold-call"):
        run = asked(web, world, "How do I price a retainer?")
        for round_ in range(1, ROUNDS + 1):
            starts = nth_call(stack, run, round_)
            assert starts[-1]["pid"] != worker.pid
            os.kill(starts[-1]["pid"], signal.SIGKILL)
            lost = functools.partial(worker_lost, worker, round_)
            wait_for(lost, timeout=30, what="the worker to see its pool process lost")
    wait_status(stack, run, "awaiting_review", logs=worker)
    _assert_killed_run_finished_once(stack, world, run)


def test_a_pool_process_killed_after_its_call_returned_bills_the_run_once(
    stack: FaultStack, worlds: dict[str, World], queue: str
) -> None:
    """Killed after the provider answered, before the attempt recorded and committed it: the
    answer dies with the process. The redelivered attempt calls again (on the reservation the
    dead one left open) and bills that call: the tenant pays once for the run, the platform
    absorbs the lost call (the journal shows both)."""
    world = worlds["late"]
    env = stack.env(queue)
    web, worker = stack.spawn_web(env), stack.spawn_worker(env, "late-worker", pool="prefork")
    wait_ready(web, worker)

    with gate(stack, "hold-after-call"):
        run = asked(web, world, "How do I price a retainer?")
        [done] = wait_for(lambda: journal(stack, run, "call-done"), timeout=30, what="call")
        os.kill(done["pid"], signal.SIGKILL)
        wait_for(
            lambda: "WorkerLostError" in worker.log.read_text(errors="replace"),
            timeout=30,
            what="the worker to see its pool process lost",
        )
    wait_status(stack, run, "awaiting_review", logs=worker)
    assert len(journal(stack, run, "call-done")) == 2
    assert_exactly_once(stack, world, [run], lost_attempts=True)
    assert ledger(stack.limiter, world) == (spend_in_postgres(stack, world), 0)


def test_a_worker_killed_mid_call_is_redelivered_after_the_visibility_timeout_and_runs_once(
    stack: FaultStack, worlds: dict[str, World], queue: str
) -> None:
    """The whole worker SIGKILLed (a node lost, the OOM killer): nobody is left to put the
    message back. It stays unacknowledged in Redis until the visibility timeout (4 s here)
    passes, and another worker takes it. Delivering it once more afterwards changes nothing."""
    world = worlds["solo"]
    env = stack.env(queue)
    web, worker = stack.spawn_web(env), stack.spawn_worker(env, "solo-worker-0")
    wait_ready(web, worker)

    with gate(stack, "hold-call"):
        run = asked(web, world, "How do I price a retainer?")
        for round_ in range(1, ROUNDS + 1):
            starts = nth_call(stack, run, round_)
            worker.kill()
            assert run_row(stack, run) == ("queued", "")  # its transaction died with it
            # Workers look for unacknowledged messages past the visibility timeout when they
            # start (then every 100 s or so): start the next once the timeout has passed.
            time.sleep(max(0.0, starts[-1]["t"] + VISIBILITY_TIMEOUT + 0.5 - time.time()))
            if round_ < ROUNDS:  # held at the gate again, and killed again
                worker = stack.spawn_worker(env, f"solo-worker-{round_}")
                wait_ready(worker)
    worker = stack.spawn_worker(env, "solo-worker-last")
    wait_ready(worker)
    wait_status(stack, run, "awaiting_review", logs=worker)
    _assert_killed_run_finished_once(stack, world, run)

    # The same task delivered again (a duplicate, or a redelivery after the run finished)
    # finds the run done: no call, no usage, no audit event.
    app = faults_app(stack)
    try:
        again = app.send_task(
            "agents.run_agent", args=[run], kwargs={"tenant_id": world.tenant}, queue=queue
        )
        assert again.get(timeout=30) == "awaiting_review"
    finally:
        app.close()
    _assert_killed_run_finished_once(stack, world, run)
    assert_audit_chain_intact(stack, world, queue)
