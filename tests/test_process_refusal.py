"""A web or worker process whose database role could bypass row-level security refuses to
start: the Procfile's own `web` (gunicorn) and `worker` (Celery) commands, run as real
processes against the test database, exit non-zero with the check's message, and the same
commands as the runtime role start and answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import environ
import psycopg
import pytest
from django.conf import settings
from django.db import connections
from psycopg import sql

from config.celery import app as celery_app
from config.processes import BASE_DIR, free_port, spawn, stop_groups, tail_of
from tests.test_celery_tasks import database_url

BIN_DIR = Path(sys.executable).parent
# How long a process may take to refuse, or to become ready, on two shared cores.
START_TIMEOUT_S = 90
REFUSAL = "Refusing to start: the tenant boundary is not enforced by the database."

Processes = list[subprocess.Popen[bytes]]


def procfile_command(process: str) -> str:
    for line in (BASE_DIR / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return command.strip()
    raise AssertionError(f"the Procfile has no {process!r} process")


def start(
    processes: Processes,
    process: str,
    runtime_url: str,
    log: Path,
    *extra_args: str,
    port: int = 0,
) -> subprocess.Popen[bytes]:
    """The Procfile's `process` command, through sh as Procfile runners start it, connected as
    `runtime_url`, with the test database's owner, the test Redis and a queue of its own."""
    env = {
        **os.environ,
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(BASE_DIR),
        "DATABASE_URL": runtime_url,
        "DATABASE_OWNER_URL": database_url("owner"),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_TASK_DEFAULT_QUEUE": f"refusal-{uuid.uuid4().hex[:12]}",
        "PORT": str(port or free_port()),
        # One web worker: when two fail to boot at once, gunicorn's arbiter sometimes halts
        # from inside the handling of the other's exit and reports status 1, not 3.
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "2",
        "CELERY_CONCURRENCY": "1",
    }
    command = f'exec {procfile_command(process)} "$@"'
    proc = spawn(["/bin/sh", "-c", command, process, *extra_args], env, log)
    processes.append(proc)
    return proc


def exit_status(proc: subprocess.Popen[bytes], log: Path) -> int:
    try:
        return proc.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {START_TIMEOUT_S} s:\n{tail_of(log)}")


def wait_until_ready(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `ready()`; fail as soon as the process exits, or when the time is up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with status {proc.returncode}:\n{tail_of(log)}")
        if ready():
            return
        time.sleep(0.5)
    pytest.fail(f"not ready after {START_TIMEOUT_S} s:\n{tail_of(log)}")


@pytest.fixture
def processes() -> Iterator[Processes]:
    """The processes a test starts; each one's whole group is stopped at the end."""
    started: Processes = []
    yield started
    stop_groups(started)


@pytest.fixture(params=["bypassrls", "superuser"])
def unsafe_role(request: pytest.FixtureRequest, django_db_setup: None) -> Iterator[tuple[str, str]]:
    """(DATABASE_URL, the check that refuses it): a role with the runtime role's privileges
    and BYPASSRLS, or the administrator the tests provision with (a superuser)."""
    if request.param == "superuser":
        admin = environ.Env.db_url_config(settings.DATABASE_ADMIN_URL)
        overrides = {key: admin[key] for key in ("USER", "PASSWORD", "HOST", "PORT", "OPTIONS")}
        yield database_url("default", **overrides), "tenants.E010"
        return
    role, password = f"refusal_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    runtime = connections["default"].settings_dict["USER"]
    with psycopg.connect(settings.DATABASE_ADMIN_URL, autocommit=True) as admin_connection:
        admin_connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role), sql.Literal(password), sql.Identifier(runtime)
            )
        )
        try:
            yield database_url("default", USER=role, PASSWORD=password), "tenants.E011"
        finally:
            admin_connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.mark.worker
def test_a_worker_refuses_a_role_that_can_bypass_rls(
    unsafe_role: tuple[str, str], tmp_path: Path, processes: Processes
) -> None:
    url, check = unsafe_role
    log = tmp_path / "worker.log"
    worker = start(processes, "worker", url, log)
    assert exit_status(worker, log) == 1, tail_of(log)  # SystemExit(1) in config/celery.py
    output = log.read_text()
    assert REFUSAL in output
    assert check in output
    assert " ready." not in output  # it never took a task


@pytest.mark.worker
def test_gunicorn_refuses_a_role_that_can_bypass_rls(
    unsafe_role: tuple[str, str], tmp_path: Path, processes: Processes
) -> None:
    url, check = unsafe_role
    log = tmp_path / "gunicorn.log"
    web = start(processes, "web", url, log)
    # Each gunicorn worker imports config.wsgi, whose check raises: the worker exits with
    # WORKER_BOOT_ERROR and the arbiter halts, "Worker failed to boot." (status 3).
    assert exit_status(web, log) == 3, tail_of(log)
    output = log.read_text()
    assert REFUSAL in output
    assert check in output


@pytest.mark.worker
def test_a_worker_with_the_runtime_role_starts_and_answers(
    django_db_setup: None, tmp_path: Path, processes: Processes
) -> None:
    log = tmp_path / "worker.log"
    hostname = f"refusal-control-{uuid.uuid4().hex[:8]}@test"
    worker = start(processes, "worker", database_url("default"), log, "--hostname", hostname)

    def answers_ping() -> bool:
        return bool(celery_app.control.ping(destination=[hostname], timeout=1.0))

    wait_until_ready(answers_ping, worker, log)
    assert REFUSAL not in log.read_text()


@pytest.mark.worker
def test_gunicorn_with_the_runtime_role_serves(
    django_db_setup: None, tmp_path: Path, processes: Processes
) -> None:
    log, port = tmp_path / "gunicorn.log", free_port()
    web = start(processes, "web", database_url("default"), log, port=port)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_until_ready(ready, web, log)
    assert REFUSAL not in log.read_text()
