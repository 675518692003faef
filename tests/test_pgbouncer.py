"""The tenant boundary holds behind PgBouncer in transaction pooling mode.

Debian's `pgbouncer` (`make pgbouncer` installs it) runs in the foreground in front of the
test database, with real SCRAM authentication as the runtime role, two server connections
and many clients: every server backend serves transactions of several tenants and of no
tenant, one after the other, and PgBouncer resets nothing between them. The app reaches it
through a second database alias, so the code under test is the real `tenant_context` and ORM.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from django.db import DatabaseError, connections, transaction

from config.processes import free_port, spawn, stop_groups, tail_of
from conversations.models import Conversation
from tenants.context import TenantScopeError, tenant_context
from tests.factories import World, build_world

PGBOUNCER = Path(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
SERVER_POOL = 2  # server connections shared by all clients of the pooled entry
THREADS = 12  # client connections, each its own Django connection
TRANSACTIONS_PER_THREAD = 200
START_TIMEOUT = 15.0


@dataclass
class Bouncer:
    port: int
    pooled: str  # the entry with SERVER_POOL server connections
    single: str  # the same database through exactly one server connection
    log: Path


def _server_address() -> tuple[str, str]:
    cfg = connections["default"].settings_dict
    host = cfg["HOST"] or cfg.get("OPTIONS", {}).get("host") or "127.0.0.1"
    return str(host), str(cfg["PORT"] or 5432)


def _run_as(host: str) -> str | None:
    """PgBouncer refuses to run as root: then run it as whoever owns the server's socket
    directory (the embedded PostgreSQL's system user), which may open the socket."""
    if os.geteuid() != 0:
        return None
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "root"
    return "nobody" if owner == "root" else owner


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@pytest.fixture(scope="module")
def bouncer(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bouncer]:
    if not os.access(PGBOUNCER, os.X_OK):
        raise RuntimeError(
            f"These tests need Debian's pgbouncer at {PGBOUNCER}: run `make pgbouncer` "
            "(or, as root, `apt-get install pgbouncer`)."
        )
    cfg = connections["default"].settings_dict
    host, port = _server_address()
    root = tmp_path_factory.mktemp("pgbouncer")
    bouncer = Bouncer(
        port=free_port(), pooled=cfg["NAME"], single=f"{cfg['NAME']}_single", log=root / "log"
    )
    # Clients log in with the runtime role's password (SCRAM), and PgBouncer logs in to
    # PostgreSQL as that same role with it: no superuser, no trust.
    auth_file = root / "userlist.txt"
    auth_file.write_text(f"{_quoted(cfg['USER'])} {_quoted(cfg['PASSWORD'])}\n")
    server = f"host={host} port={port} dbname={cfg['NAME']}"
    ini = root / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{bouncer.pooled} = {server}\n"
        f"{bouncer.single} = {server} pool_size=1\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {bouncer.port}\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {auth_file}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_POOL}\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        f"max_client_conn = {THREADS * 4}\n"
        "query_wait_timeout = 30\n"
        "server_connect_timeout = 5\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
    )
    user = _run_as(host)
    if user:
        entry = pwd.getpwnam(user)
        for path in (root, auth_file, ini):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    auth_file.chmod(0o600)
    command = [str(PGBOUNCER), *(["-u", user] if user else []), str(ini)]
    proc = spawn(command, env={"PATH": os.environ.get("PATH", "")}, log=bouncer.log)
    try:
        _wait_until_accepting(bouncer, proc)
        yield bouncer
    finally:
        stop_groups([proc], timeout=10)


def _conninfo(bouncer: Bouncer, dbname: str) -> str:
    cfg = connections["default"].settings_dict
    return psycopg.conninfo.make_conninfo(
        host="127.0.0.1",
        port=bouncer.port,
        dbname=dbname,
        user=cfg["USER"],
        password=cfg["PASSWORD"],
        connect_timeout=2,
    )


def _wait_until_accepting(bouncer: Bouncer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({proc.returncode}):\n{tail_of(bouncer.log)}")
        try:
            with psycopg.connect(_conninfo(bouncer, bouncer.pooled), prepare_threshold=None):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not accept connections within {START_TIMEOUT:.0f} s: {exc}\n"
                    f"{tail_of(bouncer.log)}"
                ) from exc
            time.sleep(0.1)


@pytest.fixture
def through_bouncer(bouncer: Bouncer, live_db: None) -> Iterator[dict[str, str]]:
    """Database aliases that reach the test database through PgBouncer, `pooled` and
    `single` (one server connection), as the runtime role, configured as a deployment must:
    no server-side prepared statements. Django's psycopg backend already defaults to
    `prepare_threshold=None`; it is spelled out because pgbouncer < 1.21 cannot track
    prepared statements, and with server-side binding and a threshold another client's
    backend answers `prepared statement "_pg3_0" already exists`."""
    cfg = connections["default"].settings_dict
    options = {k: v for k, v in cfg["OPTIONS"].items() if k not in ("host", "pool")}
    aliases = {"pooled": "pgbouncer", "single": "pgbouncer_single"}
    for entry, alias in aliases.items():
        connections.settings[alias] = {
            **cfg,
            "NAME": getattr(bouncer, entry),
            "HOST": "127.0.0.1",
            "PORT": str(bouncer.port),
            "CONN_MAX_AGE": None,
            "ATOMIC_REQUESTS": False,
            "OPTIONS": {**options, "prepare_threshold": None},
        }
    yield aliases
    for alias in aliases.values():
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]


@pytest.fixture
def worlds(live_db: None) -> dict[str, World]:
    return {slug: build_world(slug) for slug in ("acme", "globex", "initech")}


def _visible(alias: str) -> tuple[int, set[str], set[str]]:
    """This transaction's server backend, and the conversations and tenants it can see,
    with nothing but row-level security to filter them."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    rows = Conversation.objects.unscoped().using(alias).values_list("id", "tenant_id")
    return pid, {str(c) for c, _ in rows}, {str(t) for _, t in rows}


def _write_refused(alias: str, own: World, other: World) -> list[str]:
    """Inside `own`'s context: moving a row to `other` is rejected by the policy, and
    updating `other`'s row touches nothing. Problems found, if any."""
    problems = []
    try:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(
                "UPDATE conversations_conversation SET tenant_id = %s WHERE id = %s",
                [other.tenant.pk, own.conversations[0].pk],
            )
        problems.append(f"{own.tenant.slug} moved a conversation to {other.tenant.slug}")
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "42501":  # insufficient_privilege
            problems.append(f"unexpected error moving a row: {exc!r}")
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "UPDATE conversations_conversation SET title = 'taken' WHERE id = %s",
            [other.conversations[0].pk],
        )
        if cursor.rowcount != 0:
            problems.append(f"{own.tenant.slug} updated {cursor.rowcount} rows of another tenant")
    return problems


def test_interleaved_tenants_share_server_backends_and_see_only_their_rows(
    worlds: dict[str, World], through_bouncer: dict[str, str]
) -> None:
    alias = through_bouncer["pooled"]
    slugs = [*worlds, "none"]
    failures: list[str] = []
    served: dict[int, set[str]] = {}  # server backend -> who it served
    lock = threading.Lock()
    start = threading.Barrier(THREADS, timeout=30)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()  # every client connected at once, more clients than server backends
            for _ in range(TRANSACTIONS_PER_THREAD):
                slug = rng.choice(slugs)
                if slug == "none":
                    with transaction.atomic(using=alias):
                        pid, seen, tenants = _visible(alias)
                    if seen:
                        failures.append(f"no tenant saw {len(seen)} conversations")
                else:
                    world = worlds[slug]
                    other = worlds[rng.choice([s for s in worlds if s != slug])]
                    with tenant_context(world.tenant, using=alias):
                        pid, seen, tenants = _visible(alias)
                        failures.extend(_write_refused(alias, world, other))
                    if seen != world.conversation_ids or tenants != {str(world.tenant.pk)}:
                        failures.append(f"{slug} saw {sorted(seen)} of tenants {sorted(tenants)}")
                with lock:
                    served.setdefault(pid, set()).add(slug)
        except Exception as exc:  # surface thread errors in the main thread
            failures.append(f"thread error: {exc!r}")
        finally:
            connections[alias].close()

    connections[alias].ensure_connection()  # fail here, not in twelve threads, if it cannot
    connections[alias].close()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client hung behind PgBouncer"

    assert failures == []
    # Twelve clients, at most SERVER_POOL server backends, and each of them served every
    # tenant and tenant-less transactions too.
    assert 1 <= len(served) <= SERVER_POOL
    assert all(who == set(slugs) for who in served.values()), served


def test_no_tenant_right_after_a_tenant_on_the_same_backend_sees_nothing(
    worlds: dict[str, World], bouncer: Bouncer, through_bouncer: dict[str, str]
) -> None:
    """Two client connections, one server backend: the second client's transaction, outside
    any tenant context, runs on the backend that just served a tenant and sees no rows."""
    alias = through_bouncer["single"]
    other_client = psycopg.connect(
        _conninfo(bouncer, bouncer.single), prepare_threshold=None, autocommit=True
    )
    try:
        for world in [worlds["acme"], worlds["globex"]] * 10:
            with tenant_context(world.tenant, using=alias):
                tenant_pid, seen, _ = _visible(alias)
            assert seen == world.conversation_ids

            with other_client.transaction():
                row = other_client.execute(
                    "SELECT pg_backend_pid(), (SELECT count(*) FROM conversations_conversation),"
                    " (SELECT count(*) FROM conversations_message)"
                ).fetchone()
            assert row == (tenant_pid, 0, 0)

            # Django's own connection, outside the context: same backend, nothing visible,
            # and the ORM refuses to run a tenant query at all.
            with transaction.atomic(using=alias):
                pid, seen, tenants = _visible(alias)
                with pytest.raises(TenantScopeError):
                    list(Conversation.objects.using(alias).all())
            assert (pid, seen, tenants) == (tenant_pid, set(), set())
    finally:
        other_client.close()
