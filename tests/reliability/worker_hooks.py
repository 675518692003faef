"""Fault-test instrumentation, loaded only by the fault tests' Celery workers
(`celery worker --include tests.reliability.worker_hooks`); no production process imports it.

At worker start it wraps two functions of the worker process, for agent runs only:

- `billing.limiter.reserve` (the limiter's admission before every model and tool call):
  journals `admit`, then `admitted` or `refused` (the limiter said no or was unreachable);
- the offline responder's `_generate` (the model call itself, after admission): journals
  `call-start` and, once it returned, `call-done`.

Each waits while a gate file exists in FAULT_HOOKS_DIR (`hold-admission` before admission,
`hold-call` inside the call, `hold-after-call` once it returned), so a test can stop a run at
an exact point, break something, and let it go on. The journal
(FAULT_HOOKS_DIR/journal, one JSON object per line, appended and flushed before the code
goes on) survives a SIGKILL of the worker: `call-done` lines count the model calls that
really happened.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from celery import signals

HOOKS_DIR = Path(os.environ.get("FAULT_HOOKS_DIR", "/nonexistent"))
GATE_TIMEOUT_S = 120


def journal(event: str, **fields: Any) -> None:
    from config.telemetry import current_ids

    entry = {
        "event": event,
        "run": current_ids().get("agent_run_id"),
        "pid": os.getpid(),
        "t": time.time(),
        **fields,
    }
    fd = os.open(HOOKS_DIR / "journal", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def wait_at_gate(name: str) -> None:
    gate = HOOKS_DIR / name
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _in_a_run() -> bool:
    from config.telemetry import current_ids

    return current_ids().get("agent_run_id") is not None


@signals.worker_init.connect
def install(**_: Any) -> None:
    if not HOOKS_DIR.is_dir():
        return
    from agents.llm import ExtractiveResponder
    from billing import limiter

    reserve = limiter.reserve

    @functools.wraps(reserve)
    def journaled_reserve(**kwargs: Any) -> Any:
        if not _in_a_run():
            return reserve(**kwargs)
        journal("admit")
        wait_at_gate("hold-admission")
        try:
            reservation = reserve(**kwargs)
        except Exception as exc:
            journal("refused", error=type(exc).__name__)
            raise
        journal("admitted")
        return reservation

    limiter.reserve = journaled_reserve

    generate = ExtractiveResponder._generate

    @functools.wraps(generate)
    def journaled_generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        journal("call-start")
        wait_at_gate("hold-call")
        result = generate(self, *args, **kwargs)
        journal("call-done")
        wait_at_gate("hold-after-call")
        return result

    ExtractiveResponder._generate = journaled_generate  # type: ignore[method-assign]
