"""Every model and tool call goes through here: it is attributed (tenant, user, agent run,
model or tool, tokens) and recorded as a UsageEvent in the run's transaction. Rate limits
and cost caps (Redis) hook in here too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from billing.models import UsageEvent

T = TypeVar("T")


def _tokens(result: Any) -> tuple[int, int]:
    usage = getattr(result, "usage_metadata", None) or {}
    return int(usage.get("input_tokens", 0) or 0), int(usage.get("output_tokens", 0) or 0)


def guarded_call(
    *,
    kind: str,
    run: Any,
    step: str,
    call: Callable[[], T],
    model: str = "",
    tool: str = "",
) -> T:
    """Run one model or tool call and record its usage (idempotent per run and step)."""
    result = call()
    input_tokens, output_tokens = _tokens(result) if kind == UsageEvent.Kind.MODEL else (0, 0)
    UsageEvent.objects.get_or_create(
        idempotency_key=f"{run.id}:{step}",
        defaults={
            "kind": kind,
            "user_id": run.requested_by_id,
            "agent_run": run,
            "model": model,
            "tool": tool,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        },
    )
    return result
