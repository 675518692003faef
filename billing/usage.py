"""Every model and tool call goes through `guarded_call`: admitted by the Redis limiter
(rate limits, spend caps, cost reservation), attributed (tenant, user, agent run, model or
tool, tokens, cost) as a UsageEvent in the run's transaction, settled in Redis, and queued
for Stripe metering through the MeterEvent outbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.core.cache import cache
from django.utils import timezone
from opentelemetry import trace

from audit.actions import record_audit_event
from billing import limiter
from billing.models import MeterEvent, ModelPrice, UsageEvent

T = TypeVar("T")
# A no-op until config.telemetry.setup_tracing installs a tracer provider.
tracer = trace.get_tracer(__name__)
DEFAULT_OUTPUT_ESTIMATE = 1024  # tokens reserved for an answer before we know its length


def price_for(name: str) -> ModelPrice:
    return ModelPrice.objects.filter(name=name).first() or ModelPrice(name=name)


def _tokens(result: Any) -> tuple[int, int]:
    usage = getattr(result, "usage_metadata", None) or {}
    return int(usage.get("input_tokens", 0) or 0), int(usage.get("output_tokens", 0) or 0)


def estimate_input_tokens(messages: Any) -> int:
    text = "".join(str(getattr(m, "content", m)) for m in (messages or []))
    return len(text) // 4 + 1


def _soft_cap_event(period: str) -> None:
    record_audit_event(
        "billing.soft_cap_reached",
        actor_type="system",
        resource_type="billing",
        resource_id=period,
        context={"period": period},
    )


def notify_soft_cap(reservation: limiter.Reservation) -> bool:
    """Once per tenant and period: an audit event (shown to admins) that the soft cap is hit."""
    if cache.add(f"soft-cap:{{{reservation.tenant_id}}}:{reservation.period}", 1, 40 * 24 * 3600):
        _soft_cap_event(reservation.period)
        return True
    return False


def _ledger(run: Any) -> list[dict[str, Any]]:
    """What this run has spent, kept on the run object so that usage survives a rollback of
    the run's work (see restore_usage)."""
    if not hasattr(run, "_usage_ledger"):
        run._usage_ledger = []
    ledger: list[dict[str, Any]] = run._usage_ledger
    return ledger


def _record(entry: dict[str, Any]) -> bool:
    event, created = UsageEvent.objects.get_or_create(
        idempotency_key=entry["idempotency_key"],
        defaults={k: v for k, v in entry.items() if k != "idempotency_key"},
    )
    if created and event.cost_microdollars > 0:
        now = timezone.now()
        MeterEvent.objects.create(
            usage_event=event,
            identifier=str(event.id),
            value=event.cost_microdollars,
            timestamp=now,
            next_attempt_at=now - timedelta(seconds=1),
        )
    return created


def restore_usage(run: Any) -> int:
    """After the run's work was rolled back (a halt, a failure, a retry), write again what its
    calls cost: money spent at a provider is billed even when the answer is discarded.
    Idempotent (keyed per run and step); the soft-cap notice is written again too."""
    restored = 0
    for entry in _ledger(run):
        if "soft_cap_period" in entry:
            _soft_cap_event(entry["soft_cap_period"])
        elif _record(entry):
            restored += 1
    run._usage_ledger = []
    return restored


def guarded_call(
    *,
    kind: str,
    run: Any,
    step: str,
    call: Callable[[], T],
    model: str = "",
    tool: str = "",
    estimated_input_tokens: int = 0,
) -> T:
    """Run one model or tool call under the limiter and record its usage (idempotent per run
    and step). Raises limiter.RateLimited, HardCapReached or LimiterUnavailable before the
    call is made."""
    span_name = "agent.model_call" if kind == UsageEvent.Kind.MODEL else "agent.tool_call"
    with tracer.start_as_current_span(span_name) as span:
        span.set_attribute("agent.step", step)
        if kind == UsageEvent.Kind.MODEL:
            span.set_attribute("gen_ai.request.model", model)
        else:
            span.set_attribute("agent.tool.name", tool)
        price = price_for(model if kind == UsageEvent.Kind.MODEL else f"tool:{tool}")
        estimated_output = DEFAULT_OUTPUT_ESTIMATE if kind == UsageEvent.Kind.MODEL else 0
        idempotency_key = f"{run.id}:{step}"
        reservation = limiter.reserve(
            user_id=run.requested_by_id,
            estimated_tokens=estimated_input_tokens + estimated_output,
            estimated_cost=price.cost(estimated_input_tokens, estimated_output),
            request_id=idempotency_key,
        )
        if reservation.soft_cap_reached and notify_soft_cap(reservation):
            _ledger(run).append({"soft_cap_period": reservation.period})
        try:
            result = call()
        except BaseException:
            limiter.release(reservation)
            raise
        input_tokens, output_tokens = _tokens(result) if kind == UsageEvent.Kind.MODEL else (0, 0)
        cost = price.cost(input_tokens, output_tokens)
        entry = {
            "idempotency_key": idempotency_key,
            "kind": kind,
            "user_id": run.requested_by_id,
            "agent_run": run,
            "model": model,
            "tool": tool,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_microdollars": cost,
        }
        created = _record(entry)
        if created:
            _ledger(run).append(entry)
        limiter.settle(
            reservation,
            actual_cost=cost if created else 0,
            actual_tokens=input_tokens + output_tokens,
        )
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        span.set_attribute("agent.cost_microdollars", cost)
        return result
