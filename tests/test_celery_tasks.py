"""TenantTask: a task runs inside its tenant, sees only its rows, and needs a tenant."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from celery.exceptions import TaskError
from django.conf import settings
from django.db import connections

from config.celery import app as celery_app
from tenants.context import TenantScopeError
from tests import celery_probe
from tests.factories import build_world

BASE_DIR = Path(settings.BASE_DIR)


def database_url(alias: str, **overrides: Any) -> str:
    """The alias's connection as a DATABASE_URL for a child process (some settings overridden,
    e.g. USER and PASSWORD)."""
    cfg = {**connections[alias].settings_dict, **overrides}
    host = cfg["HOST"] or cfg.get("OPTIONS", {}).get("host", "")
    netloc = f"{quote(cfg['USER'])}:{quote(cfg['PASSWORD'] or '', safe='')}@"
    if host.startswith("/"):
        return f"postgres://{netloc}/{cfg['NAME']}?host={quote(host, safe='/')}"
    return f"postgres://{netloc}{host}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


@pytest.mark.django_db
def test_eager_task_runs_in_its_tenant_only() -> None:
    acme, globex = build_world("acme"), build_world("globex")
    result = celery_probe.visible_conversations.apply(kwargs={"tenant_id": str(acme.tenant.id)})
    seen = result.get()
    assert seen["context"] == str(acme.tenant.id)
    assert set(seen["orm"]) == set(seen["raw"]) == acme.conversation_ids
    assert not set(seen["raw"]) & globex.conversation_ids


@pytest.mark.django_db
def test_a_tenant_task_without_a_tenant_is_refused() -> None:
    with pytest.raises(TenantScopeError, match="without tenant_id"):
        celery_probe.visible_conversations.delay()  # type: ignore[call-arg]
    with pytest.raises(TenantScopeError, match="without tenant_id"):
        celery_probe.visible_conversations.apply_async(kwargs={"tenant_id": ""})
    with pytest.raises(TenantScopeError, match="not a tenant id"):
        celery_probe.visible_conversations.delay(tenant_id="acme")
    # Run directly (as a worker would run a hand-crafted message): refused too.
    result = celery_probe.visible_conversations.apply(kwargs={})
    assert isinstance(result.result, TenantScopeError)


@pytest.mark.django_db
def test_a_system_task_says_so_and_sees_no_tenant_rows() -> None:
    build_world("acme")
    seen = celery_probe.system_sweep.apply().get()
    assert seen == {"context": None, "orm": "refused", "raw": []}


@pytest.fixture
def worker(live_db: None, unique_queue: str) -> Iterator[str]:
    """A real Celery worker process on Redis, connected to the test database as the runtime role."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url("default"),
        "DATABASE_OWNER_URL": database_url("owner"),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_TASK_DEFAULT_QUEUE": unique_queue,
        "PYTHONPATH": str(BASE_DIR),
    }
    log = BASE_DIR / ".data" / f"worker-{unique_queue}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool",
                "solo",
                "--queues",
                unique_queue,
                "--include",
                "tests.celery_probe",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    previous_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = unique_queue
    try:
        yield unique_queue
    finally:
        celery_app.conf.task_default_queue = previous_queue
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15):
            print(log.read_text())
        log.unlink(missing_ok=True)


@pytest.mark.worker
def test_a_real_worker_runs_each_task_in_its_own_tenant(worker: str) -> None:
    acme, globex = build_world("acme"), build_world("globex")
    results = {
        world.tenant.slug: celery_probe.visible_conversations.delay(tenant_id=str(world.tenant.id))
        for world in (acme, globex)
    }
    for world in (acme, globex):
        seen = results[world.tenant.slug].get(timeout=60)
        assert seen["context"] == str(world.tenant.id)
        assert set(seen["orm"]) == set(seen["raw"]) == world.conversation_ids

    assert celery_probe.system_sweep.delay().get(timeout=60)["raw"] == []

    # A message that skipped apply_async's check (hand-crafted, or from old code) is refused
    # by the worker itself.
    crafted = celery_app.send_task("tests.visible_conversations", kwargs={}, queue=worker)
    with pytest.raises((TenantScopeError, TaskError)) as refused:
        crafted.get(timeout=60)
    assert "without tenant_id" in str(refused.value)
