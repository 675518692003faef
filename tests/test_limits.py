"""Rate limits and spend caps: the Redis limiter (billing.limiter) against real Redis and
PostgreSQL (as the runtime role).

Time is simulated by rewriting the scores of the sliding windows' sorted sets in Redis (an
entry "ages" when its score moves back), never by sleeping. Every test works on its own
tenant, whose keys all carry the `{tenant_id}` hash tag; they are deleted afterwards (the
Redis database is shared with the cache and Celery, so it is never flushed).
"""

from __future__ import annotations

import importlib
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import pytest
import redis
from django.conf import settings
from django.db import connections
from django.db.models import Sum
from django.test import Client, override_settings
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import ToolCall
from langchain_core.outputs import ChatGeneration, ChatResult
from redis.crc import key_slot

from accounts.models import User
from agents.llm import use_chat_model
from agents.models import AgentRun
from agents.runs import (
    HALT_NOTICE,
    RunWaiting,
    execute_run,
    requeue_all_stalled_runs,
    requeue_stalled_runs,
    run_agent,
)
from audit.actions import audit_operator
from audit.models import AuditEvent
from billing import limiter
from billing.limiter import HardCapReached, LimiterUnavailable, RateLimited
from billing.models import ModelPrice, PlanLimit, UsageEvent
from billing.usage import guarded_call
from config.celery import app as celery_app
from conversations.models import Conversation, Message
from tenants.context import platform_context, tenant_context
from tests.factories import World, build_world

BILLING_SEED = importlib.import_module("billing.migrations.0002_pricing_limits_stripe")

MODEL = "limits-model"
ANSWER = "Offer three packages and anchor on the largest one."
USAGE: UsageMetadata = {"input_tokens": 200, "output_tokens": 40, "total_tokens": 240}
# Everything but the limit a test is about is out of the way (0 means unlimited for caps).
GENEROUS = {
    "requests_per_minute": 10_000,
    "user_requests_per_minute": 10_000,
    "tokens_per_minute": 10_000_000,
    "soft_cap_microdollars": 0,
    "hard_cap_microdollars": 0,
}


# --------------------------------------------------------------------------- helpers


def redis_db() -> redis.Redis:
    """A client of the limiter's Redis of our own (the limiter's may be pointed elsewhere)."""
    return redis.Redis.from_url(settings.LIMITER_REDIS_URL, decode_responses=True)


def tenant_keys(world: World) -> set[str]:
    """Every key in Redis that names the tenant (limiter and cache alike)."""
    return set(redis_db().scan_iter(match=f"*{world.tenant.id}*", count=1000))


def set_limits(**fields: int) -> None:
    """The starter plan's limits (every test tenant is on starter)."""
    with platform_context():
        PlanLimit.objects.update_or_create(plan="starter", defaults={**GENEROUS, **fields})


def set_price(
    *, per_call: int = 0, input_per_million: int = 0, output_per_million: int = 0
) -> None:
    with platform_context():
        ModelPrice.objects.update_or_create(
            name=MODEL,
            defaults={
                "per_call": per_call,
                "input_per_million": input_per_million,
                "output_per_million": output_per_million,
            },
        )


def seed_billing_rows() -> None:
    """The prices and plan limits billing's migration ships."""
    with platform_context():
        for name, inp, out, call in BILLING_SEED.PRICES:
            ModelPrice.objects.update_or_create(
                name=name,
                defaults={"input_per_million": inp, "output_per_million": out, "per_call": call},
            )
        for plan, rpm, user_rpm, tpm, soft, hard in BILLING_SEED.LIMITS:
            PlanLimit.objects.update_or_create(
                plan=plan,
                defaults={
                    "requests_per_minute": rpm,
                    "user_requests_per_minute": user_rpm,
                    "tokens_per_minute": tpm,
                    "soft_cap_microdollars": soft,
                    "hard_cap_microdollars": hard,
                },
            )


def limiter_keys(world: World, user: User | None = None) -> dict[str, str]:
    return limiter.keys(str(world.tenant.id), user.pk if user else None, limiter.period_of())


def now_ms() -> int:
    return int(time.time() * 1000)


def retry_after_range(oldest_ms: float, before_ms: int, after_ms: int) -> range:
    """The Retry-After (whole seconds, rounded up) of a refusal decided between before_ms
    and after_ms: until the oldest entry leaves the one-minute window."""
    latest = math.ceil((oldest_ms + limiter.WINDOW_MS - before_ms) / 1000)
    earliest = math.ceil((oldest_ms + limiter.WINDOW_MS - after_ms) / 1000)
    return range(max(1, earliest), latest + 1)


def window(key: str, stop: int = -1) -> list[tuple[str, float]]:
    """A window's entries, oldest first, with their scores (milliseconds)."""
    return cast(list[tuple[str, float]], redis_db().zrange(key, 0, stop, withscores=True))


def oldest_score(key: str) -> float:
    [(_member, score)] = window(key, 0)
    return score


def age_entries(key: str, by_ms: int, *, only_oldest: bool = False) -> None:
    """Simulate time passing: move entries of a window back by `by_ms`."""
    entries = window(key, 0 if only_oldest else -1)
    redis_db().zadd(key, {member: score - by_ms for member, score in entries})


def queued_run(world: World, body: str, conversation: Conversation | None = None) -> AgentRun:
    """A client's message and its queued run, as post_message leaves them (without going
    through the limiter or enqueueing the task). Call inside the tenant's context."""
    conversation = conversation or world.conversations[0]
    message = Message.objects.create(
        conversation=conversation, sender=Message.Sender.CLIENT, author=world.client, body=body
    )
    return AgentRun.objects.create(
        conversation=conversation, trigger_message=message, requested_by=world.client
    )


def model_call(run: AgentRun, step: str, called: list[str] | None = None) -> AIMessage:
    """One model call of `run` through guarded_call (its answer costs USAGE's tokens)."""

    def call() -> AIMessage:
        if called is not None:
            called.append(step)
        return AIMessage(content=ANSWER, usage_metadata=USAGE)

    return guarded_call(
        kind=UsageEvent.Kind.MODEL,
        run=run,
        step=step,
        model=MODEL,
        call=call,
        estimated_input_tokens=10,
    )


def spend_in_database() -> int:
    return int(UsageEvent.objects.aggregate(total=Sum("cost_microdollars"))["total"] or 0)


def audit_events(world: World, action: str) -> list[AuditEvent]:
    with tenant_context(world.tenant), audit_operator():
        return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def messages_url(world: World) -> str:
    return f"/api/v1/conversations/{world.conversations[0].id}/messages/"


def post_question(world: World, body: str) -> Any:
    return logged_in(world.client).post(
        messages_url(world), {"body": body}, content_type="application/json"
    )


def client_view(world: World) -> list[dict[str, Any]]:
    """Every message of the client's conversation that the client sees (all pages)."""
    http, url, rows = logged_in(world.client), messages_url(world), []
    while url:
        page = http.get(url).json()
        rows += page["results"]
        url = page["next"]
    return rows


def message_count(world: World) -> int:
    with tenant_context(world.tenant):
        return Message.objects.count()


class FixedAnswerModel(BaseChatModel):
    """The same answer, with the same token usage, to every call: safe to share between
    threads (langchain's scripted fakes keep a cursor)."""

    model_name: str = MODEL
    delay: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "fixed-answer"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay:
            time.sleep(self.delay)  # keeps reservations open while other runs are admitted
        message = AIMessage(content=ANSWER, usage_metadata=USAGE)
        return ChatResult(generations=[ChatGeneration(message=message)])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def purge_redis() -> Iterator[list[World]]:
    """Worlds whose Redis keys (limiter windows, spend, cache) are deleted after the test."""
    worlds: list[World] = []
    yield worlds
    db = redis_db()
    for world in worlds:
        stale = list(db.scan_iter(match=f"*{{{world.tenant.id}}}*", count=1000))
        if stale:
            db.delete(*stale)


@pytest.fixture
def acme(db: None, purge_redis: list[World]) -> World:
    world = build_world("acme")
    purge_redis.append(world)
    return world


@pytest.fixture
def billing_rows(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Tests on live_db commit their changes to platform rows (the starter plan's limits,
    the test model's price): put the rows billing's migration ships back afterwards."""
    yield
    with django_db_blocker.unblock():
        seed_billing_rows()
        with platform_context():
            ModelPrice.objects.filter(name=MODEL).delete()


@pytest.fixture
def eager() -> Iterator[None]:
    """Celery runs tasks inline (the app's conf is what `delay` reads)."""
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.task_eager_propagates)
    conf.task_always_eager, conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_eager_propagates = previous


@pytest.fixture
def live_acme(billing_rows: None, live_db: None, eager: None, purge_redis: list[World]) -> World:
    """Committed data (runs checkpoint from LangGraph's pool threads) and eager Celery."""
    world = build_world("acme")
    purge_redis.append(world)
    return world


# --------------------------------------------------------------------------- 1. windows


def test_the_users_window_slides_and_says_when_it_has_room(acme: World) -> None:
    set_limits(user_requests_per_minute=5)
    k = limiter_keys(acme, acme.client)
    with tenant_context(acme.tenant):
        for _ in range(5):
            limiter.check_request(user_id=acme.client.pk)
        before = now_ms()
        with pytest.raises(RateLimited) as refused:
            limiter.check_request(user_id=acme.client.pk)
        after = now_ms()
    # Full: room again when the oldest of the five leaves the window, a minute after it came.
    assert refused.value.retry_after in retry_after_range(
        oldest_score(k["user_requests"]), before, after
    )
    assert refused.value.retry_after in (59, 60)
    assert redis_db().zcard(k["user_requests"]) == 5  # a refusal is not recorded

    # 45 seconds later (every entry moved back): still full, room in about 15 seconds.
    for key in (k["user_requests"], k["tenant_requests"]):
        age_entries(key, 45_000)
    with tenant_context(acme.tenant):
        before = now_ms()
        with pytest.raises(RateLimited) as refused:
            limiter.check_request(user_id=acme.client.pk)
        after = now_ms()
    assert refused.value.retry_after in retry_after_range(
        oldest_score(k["user_requests"]), before, after
    )
    assert refused.value.retry_after in (14, 15)

    # The oldest entry leaves the window: exactly one more request is admitted (a sliding
    # window, not a fixed minute that empties at once).
    age_entries(k["user_requests"], 16_000, only_oldest=True)
    with tenant_context(acme.tenant):
        limiter.check_request(user_id=acme.client.pk)
        with pytest.raises(RateLimited) as refused:
            limiter.check_request(user_id=acme.client.pk)
    assert refused.value.retry_after in (14, 15)
    assert redis_db().zcard(k["user_requests"]) == 5

    # The limit is per user: the other client of the tenant is not affected.
    with tenant_context(acme.tenant):
        limiter.check_request(user_id=acme.other_client.pk)


def test_the_tenants_window_counts_all_its_users(acme: World) -> None:
    set_limits(requests_per_minute=3)
    with tenant_context(acme.tenant):
        limiter.check_request(user_id=acme.client.pk)
        limiter.check_request(user_id=acme.client.pk)
        limiter.check_request(user_id=acme.other_client.pk)
        for user in (acme.client, acme.other_client):
            with pytest.raises(RateLimited) as refused:
                limiter.check_request(user_id=user.pk)
            assert refused.value.retry_after in (59, 60)


def test_a_client_over_her_limit_gets_a_429_and_her_message_is_not_saved(acme: World) -> None:
    """Plain `db` tests: runs are queued on commit, which never comes, so only the client's
    messages (one request each) count in the window."""
    set_limits(user_requests_per_minute=3)
    for i in range(3):
        response = post_question(acme, f"Question {i}")
        assert response.status_code == 201, response.content
        assert response.json()["agent_run"]
    saved = message_count(acme)

    before = now_ms()
    response = post_question(acme, "One question too many")
    after = now_ms()
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["code"] == "rate_limited"
    oldest = oldest_score(limiter_keys(acme, acme.client)["user_requests"])
    retry_after = int(response["Retry-After"])
    assert retry_after in retry_after_range(oldest, before, after)
    assert retry_after in (59, 60)
    assert f"{retry_after} s" in body["message"]
    assert message_count(acme) == saved
    with tenant_context(acme.tenant):
        assert not Message.objects.filter(body="One question too many").exists()
        assert AgentRun.objects.count() == 3
    # The consultant's messages start no run and are not limited.
    reply = logged_in(acme.consultant).post(
        messages_url(acme), {"body": "I'll call you."}, content_type="application/json"
    )
    assert reply.status_code == 201, reply.content


# --------------------------------------------------------------------------- 2. tokens


def test_a_call_past_the_tokens_per_minute_budget_is_refused(acme: World) -> None:
    set_limits(tokens_per_minute=5_000)
    set_price(per_call=1_000)
    tokens_key = limiter_keys(acme)["tenant_tokens"]
    with tenant_context(acme.tenant):
        run = queued_run(acme, "How do I price?")
        user = acme.client.pk
        first = limiter.reserve(user_id=user, estimated_tokens=3_000, estimated_cost=0)
        with pytest.raises(RateLimited) as refused:
            limiter.reserve(user_id=user, estimated_tokens=2_500, estimated_cost=0)
        assert refused.value.retry_after in (59, 60)
        # Nothing recorded for the refusal: the per-second token buckets hold the first call.
        assert sum(int(v) for v in redis_db().hvals(tokens_key)) == 3_000
        limiter.reserve(user_id=user, estimated_tokens=2_000, estimated_cost=0)  # exactly full
        with pytest.raises(RateLimited):
            limiter.reserve(user_id=user, estimated_tokens=1, estimated_cost=0)

        # The first call's answer was shorter than estimated: its real count frees the rest.
        limiter.settle(first, actual_cost=0, actual_tokens=1_000)
        limiter.reserve(user_id=user, estimated_tokens=2_000, estimated_cost=0)
        with pytest.raises(RateLimited):
            limiter.reserve(user_id=user, estimated_tokens=1, estimated_cost=0)

        # A model call (input + the output estimate) is refused before the model is called.
        called: list[str] = []
        with pytest.raises(RateLimited):
            model_call(run, "model:0", called)
        assert called == []
        assert UsageEvent.objects.count() == 0
    assert int(redis_db().get(limiter_keys(acme)["reserved"]) or 0) == 0


# --------------------------------------------------------------------------- 3. hard cap


RUNS = 50
# Runs executing at once: each holds a database connection for its whole transaction and
# LangGraph's pool threads open their own for checkpoints; PostgreSQL allows 100 in all.
AT_ONCE = 20


def test_fifty_concurrent_runs_never_spend_past_the_hard_cap(live_acme: World) -> None:
    acme = live_acme
    # An answer costs 5,000 + 40 output tokens at $1/M = 5,040 micro-dollars; it is reserved
    # at 5,000 + 1,024 (the output estimate) = 6,024. The cap is ten reservations.
    set_price(per_call=5_000, output_per_million=1_000_000)
    estimate, actual = 5_000 + 1_024, 5_000 + 40
    hard_cap = 10 * estimate
    set_limits(hard_cap_microdollars=hard_cap)
    with tenant_context(acme.tenant):
        run_ids = [str(queued_run(acme, f"Question {i}").id) for i in range(RUNS)]

    model = FixedAnswerModel(delay=0.05)
    start = threading.Barrier(RUNS)
    at_once = threading.BoundedSemaphore(AT_ONCE)
    outcomes: dict[str, str] = {}
    errors: list[str] = []

    def execute(run_id: str) -> None:
        try:
            start.wait(timeout=30)
            with at_once, use_chat_model(model), tenant_context(acme.tenant):
                run = AgentRun.objects.select_related("conversation", "trigger_message").get(
                    id=run_id
                )
                outcomes[run_id] = execute_run(run).status
        except BaseException as exc:  # reported below, with the run's id
            errors.append(f"{run_id}: {exc!r}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=execute, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(outcomes) == RUNS

    with tenant_context(acme.tenant):
        runs = list(AgentRun.objects.select_related("draft_message").filter(id__in=run_ids))
        statuses = Counter(run.status for run in runs)
        spent = spend_in_database()
        calls = UsageEvent.objects.count()
    answered = statuses[AgentRun.Status.AWAITING_REVIEW]
    halted = statuses[AgentRun.Status.HALTED]
    assert answered + halted == RUNS, statuses  # none failed, none left running
    # Ten reservations fit under the cap; an eleventh only if ten had settled (for less
    # than their estimate) before the last run asked.
    assert answered in (10, 11), statuses
    assert calls == answered
    assert spent == answered * actual
    assert spent <= hard_cap + estimate  # the cap, plus at most one reservation
    assert spent <= hard_cap  # here even the cap itself (no answer costs past its estimate)

    for run in runs:
        assert {outcomes[str(run.id)]} == {run.status}
        if run.status != AgentRun.Status.HALTED:
            continue
        notice = run.draft_message
        assert notice is not None
        assert (notice.body, notice.sender, notice.status) == (
            HALT_NOTICE,
            Message.Sender.AGENT,
            Message.Status.SENT,
        )
        assert (run.error, run.output) == ("spend_cap_reached", HALT_NOTICE)
        assert run.finished_at is not None
    # The client sees the notices (and none of the drafts waiting for review).
    agent_said = [m["body"] for m in client_view(acme) if m["sender"] == "agent"]
    assert agent_said == [HALT_NOTICE] * halted
    assert len(audit_events(acme, "billing.hard_cap_reached")) == halted
    assert audit_events(acme, "agent.run_failed") == []

    # Redis agrees with PostgreSQL, and nothing is left reserved.
    k = limiter_keys(acme)
    db = redis_db()
    assert int(db.get(k["spend"]) or -1) == spent
    assert int(db.get(k["reserved"]) or 0) == 0
    assert db.hlen(k["reservations"]) == 0


class SearchThenAnswer(FixedAnswerModel):
    """First call: asks for the search_playbook tool; then answers (one run at a time)."""

    calls: int = 0

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        if self.calls > 1:
            return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        search = ToolCall(name="search_playbook", args={"query": "pricing"}, id="c1")
        message = AIMessage(content="", tool_calls=[search], usage_metadata=USAGE)
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_a_run_halted_after_a_model_call_keeps_that_calls_usage(live_acme: World) -> None:
    acme = live_acme
    set_price(per_call=6_000)  # the first call fits under the cap, the second does not
    set_limits(hard_cap_microdollars=10_000)
    with tenant_context(acme.tenant):
        run = queued_run(acme, "How do I price?")
    model = SearchThenAnswer()
    with use_chat_model(model), tenant_context(acme.tenant):
        assert execute_run(run).status == AgentRun.Status.HALTED
    assert model.calls == 1  # the model was paid for once
    assert int(redis_db().get(limiter_keys(acme)["spend"]) or 0) == 6_000
    with tenant_context(acme.tenant):
        assert spend_in_database() == 6_000


# --------------------------------------------------------------------------- 4. soft cap


def test_the_soft_cap_admits_the_call_and_is_audited_once_per_period(
    acme: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_price(per_call=10_000)
    set_limits(soft_cap_microdollars=25_000)
    period = limiter.period_of()
    with tenant_context(acme.tenant):
        run = queued_run(acme, "How do I price?")
        called: list[str] = []
        for step in range(4):  # 10k, 20k, then 30k and 40k: past the soft cap
            assert model_call(run, f"model:{step}", called).content == ANSWER
        assert called == ["model:0", "model:1", "model:2", "model:3"]
        assert spend_in_database() == 40_000
    [reached] = audit_events(acme, "billing.soft_cap_reached")
    assert (reached.actor_type, reached.resource_type) == ("system", "billing")
    assert (reached.resource_id, reached.context) == (period, {"period": period})

    # A new period starts from zero spend (rebuilt from PostgreSQL) and warns once again.
    next_period = "2999-01"
    monkeypatch.setattr(limiter, "period_of", lambda moment=None: next_period)
    set_limits(soft_cap_microdollars=5_000)
    with tenant_context(acme.tenant):
        model_call(run, "model:4")
        model_call(run, "model:5")
    assert int(redis_db().get(limiter_keys(acme)["spend"]) or 0) == 20_000
    events = audit_events(acme, "billing.soft_cap_reached")
    assert [e.resource_id for e in events] == [period, next_period]


# --------------------------------------------------------------------------- 5. cold cache


def test_after_redis_loses_the_tenants_keys_spend_is_rebuilt_and_the_cap_holds(
    acme: World,
) -> None:
    set_price(per_call=30_000)
    set_limits(hard_cap_microdollars=100_000)
    k = limiter_keys(acme)
    with tenant_context(acme.tenant):
        run = queued_run(acme, "How do I price?")
        for step in range(3):
            model_call(run, f"model:{step}")
        assert spend_in_database() == 90_000
    db = redis_db()
    assert int(db.get(k["spend"]) or 0) == 90_000

    # Redis is flushed (for this tenant) mid-period.
    db.delete(*tenant_keys(acme))
    assert tenant_keys(acme) == set()

    with tenant_context(acme.tenant):
        called: list[str] = []
        with pytest.raises(HardCapReached):  # 90k + 30k > 100k: the spend came back
            model_call(run, "model:3", called)
        assert called == []
        assert int(db.get(k["spend"]) or 0) == spend_in_database() == 90_000
        # What still fits is admitted: 10k reaches the cap exactly, one more is refused.
        fits = limiter.reserve(user_id=acme.client.pk, estimated_tokens=0, estimated_cost=10_000)
        with pytest.raises(HardCapReached):
            limiter.reserve(user_id=acme.client.pk, estimated_tokens=0, estimated_cost=1)
        limiter.release(fits)
        assert UsageEvent.objects.count() == 3


def test_rebuild_ledger_replaces_redis_spend_with_postgresqls(acme: World) -> None:
    set_price(per_call=30_000)
    k = limiter_keys(acme)
    with tenant_context(acme.tenant):
        run = queued_run(acme, "How do I price?")
        model_call(run, "model:0")
        redis_db().set(k["spend"], 12_345_678)  # drifted
        redis_db().set(k["reserved"], 999)
        assert limiter.rebuild_ledger(str(acme.tenant.id)) == 30_000
    assert int(redis_db().get(k["spend"]) or 0) == 30_000
    assert redis_db().get(k["reserved"]) is None


# --------------------------------------------------------------------------- 6. Redis down


def test_with_the_limiter_down_agents_fail_closed_and_the_rest_works(live_acme: World) -> None:
    acme = live_acme
    set_limits()
    with tenant_context(acme.tenant):
        run = queued_run(acme, "A question asked before Redis went down")
    saved = message_count(acme)

    with override_settings(LIMITER_REDIS_URL="redis://127.0.0.1:1/0"):
        limiter.reset_client()
        try:
            with tenant_context(acme.tenant), pytest.raises(LimiterUnavailable):
                limiter.check_request(user_id=acme.client.pk)

            response = post_question(acme, "Are you there?")
            assert response.status_code == 503, response.content
            assert response.json()["code"] == "agent_unavailable"
            assert int(response["Retry-After"]) > 0
            assert message_count(acme) == saved

            listed = logged_in(acme.client).get("/api/v1/conversations/")
            assert listed.status_code == 200
            assert {row["id"] for row in listed.json()["results"]} == {
                str(acme.conversations[0].id)
            }

            # An attempt now waits: no model call, the run stays queued and says why.
            with tenant_context(acme.tenant):
                with use_chat_model(FixedAnswerModel()), pytest.raises(RunWaiting):
                    execute_run(run)
                run.refresh_from_db()
                assert (run.status, run.error) == (AgentRun.Status.QUEUED, "LimiterUnavailable")

            # The queued run's task executes now and waits; its next attempts (at once here,
            # eagerly; after a backoff in a worker) wait too, and the last one fails the run
            # cleanly, without a draft.
            with override_settings(AGENT_RUN_MAX_ATTEMPTS=3):
                result = run_agent.delay(str(run.id), tenant_id=str(acme.tenant.id))
                assert result.get() == "queued"
        finally:
            limiter.reset_client()
    limiter.reset_client()

    with tenant_context(acme.tenant):
        run.refresh_from_db()
        assert (run.status, run.error) == (AgentRun.Status.FAILED, "LimiterUnavailable")
        assert run.draft_message_id is None
        assert run.finished_at is not None
        assert not Message.objects.filter(sender=Message.Sender.AGENT).exists()
        assert UsageEvent.objects.count() == 0
    [failed] = audit_events(acme, "agent.run_failed")
    assert failed.context == {"error": "LimiterUnavailable", "attempts": 3}

    # Redis is back: the client's next message is admitted and answered.
    with use_chat_model(FixedAnswerModel()):
        response = post_question(acme, "Are you there now?")
    assert response.status_code == 201, response.content
    with tenant_context(acme.tenant):
        answered = AgentRun.objects.get(id=response.json()["agent_run"])
    assert answered.status == AgentRun.Status.AWAITING_REVIEW


# --------------------------------------------------------------------------- 7. keys


def test_every_key_of_a_tenant_carries_its_hash_tag(acme: World) -> None:
    set_price(per_call=1_000)
    tag = f"{{{acme.tenant.id}}}"
    with tenant_context(acme.tenant):
        run = queued_run(acme, "How do I price?")
        limiter.check_request(user_id=acme.client.pk)
        model_call(run, "model:0")
        open_reservation = limiter.reserve(
            user_id=acme.client.pk, estimated_tokens=10, estimated_cost=5
        )
    try:
        present = tenant_keys(acme)
        expected = set(limiter_keys(acme, acme.client).values())
        assert expected <= present  # every key the scripts use exists now...
        assert all(tag in key for key in present)  # ...and every key naming it has its tag
        # One cluster slot for all of them: the scripts run unchanged on Redis Cluster.
        assert len({key_slot(key.encode()) for key in present}) == 1
    finally:
        limiter.release(open_reservation)

    # Whatever the user and period, the key names keep the tag.
    for user_id in (None, acme.client.pk, "someone"):
        for period in ("2020-01", limiter.period_of()):
            names = limiter.keys(str(acme.tenant.id), user_id, period).values()
            assert all(tag in name for name in names)
            assert len({key_slot(name.encode()) for name in names}) == 1

    # The scripts touch only the keys they are given (no key name built inside Lua).
    for script in (limiter.ADMIT, limiter.SETTLE):
        touched = re.findall(r"redis\.call\('\w+',\s*([^,)]+)", script)
        assert touched
        assert all(arg.startswith("KEYS[") for arg in touched), touched


# --------------------------------------------------------------------------- 8. retries


def test_a_call_admitted_again_under_its_request_id_keeps_its_one_reservation(
    acme: World,
) -> None:
    """A run retried or redelivered after its worker died asks again for the same step: it
    takes over the reservation the lost attempt left open instead of holding two."""
    set_limits(user_requests_per_minute=100)
    k = limiter_keys(acme, acme.client)
    with tenant_context(acme.tenant):
        first = limiter.reserve(
            user_id=acme.client.pk, estimated_tokens=10, estimated_cost=700, request_id="r:1"
        )
        again = limiter.reserve(
            user_id=acme.client.pk, estimated_tokens=10, estimated_cost=700, request_id="r:1"
        )
        assert again.request_id == first.request_id
        assert int(redis_db().get(k["reserved"]) or 0) == 700
        assert len(window(k["user_requests"])) == 1
        limiter.settle(again, actual_cost=500, actual_tokens=10)
    assert int(redis_db().get(k["reserved"]) or 0) == 0
    assert int(redis_db().get(k["spend"]) or 0) == 500


def test_a_settlement_redis_could_not_take_is_replayed_once_at_the_next_admission(
    acme: World,
) -> None:
    set_limits()
    k = limiter_keys(acme)
    with tenant_context(acme.tenant):
        open_call = limiter.reserve(user_id=acme.client.pk, estimated_tokens=0, estimated_cost=900)
        assert int(redis_db().get(k["reserved"]) or 0) == 900
        with override_settings(LIMITER_REDIS_URL="redis://127.0.0.1:1/0"):
            limiter.reset_client()
            try:
                limiter.settle(open_call, actual_cost=600, actual_tokens=0)  # Redis is "down"
            finally:
                limiter.reset_client()
        assert int(redis_db().get(k["reserved"]) or 0) == 900  # still open in Redis
        limiter.release(
            limiter.reserve(user_id=acme.client.pk, estimated_tokens=0, estimated_cost=0)
        )
        # Replayed before that admission: the reservation released, the cost added, once.
        assert int(redis_db().get(k["reserved"]) or 0) == 0
        assert int(redis_db().get(k["spend"]) or 0) == 600
        limiter._settle(open_call, 600, 0, replay=True)  # applied already: nothing happens
    assert int(redis_db().get(k["spend"]) or 0) == 600


class FailsOnceModel(FixedAnswerModel):
    """The first call fails as if Redis dropped mid-call; every call records its prompt."""

    prompts: list[list[BaseMessage]] = []

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.prompts.append(list(messages))
        if len(self.prompts) == 1:
            raise redis.ConnectionError("Connection reset by peer")
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_a_run_that_must_wait_is_tried_again_from_the_start_and_delivered_once(
    live_acme: World,
) -> None:
    acme = live_acme
    set_limits()
    set_price(per_call=1_000)
    question = "How do I price a retainer?"
    with tenant_context(acme.tenant):
        run = queued_run(acme, question)
    model = FailsOnceModel(prompts=[])
    with use_chat_model(model), override_settings(AGENT_RUN_MAX_ATTEMPTS=3):
        # The first attempt waits (its checkpoints stay behind); the next one (at once here,
        # eagerly) starts over from the question, which the model sees once.
        assert run_agent.delay(str(run.id), tenant_id=str(acme.tenant.id)).get() == "queued"
    assert len(model.prompts) == 2
    asked = [m for m in model.prompts[1] if m.type == "human" and m.content == question]
    assert len(asked) == 1
    with tenant_context(acme.tenant):
        run.refresh_from_db()
        assert (run.status, run.error) == (AgentRun.Status.AWAITING_REVIEW, "")
        assert list(UsageEvent.objects.values_list("idempotency_key", flat=True)) == [
            f"{run.id}:model:0"
        ]
    assert int(redis_db().get(limiter_keys(acme)["reserved"]) or 0) == 0

    # Delivered again (a duplicate, or a redelivery after its worker died): nothing happens.
    with use_chat_model(model):
        assert run_agent.delay(str(run.id), tenant_id=str(acme.tenant.id)).get() == (
            AgentRun.Status.AWAITING_REVIEW
        )
    assert len(model.prompts) == 2
    with tenant_context(acme.tenant):
        assert UsageEvent.objects.count() == 1
        assert Message.objects.filter(sender=Message.Sender.AGENT).count() == 1
    with tenant_context(acme.tenant), audit_operator():
        actions = list(
            AuditEvent.objects.filter(agent_run_id=str(run.id)).values_list("action", flat=True)
        )
        assert actions == ["agent.draft_created"]  # queued_run skips agent.run_queued
        assert not AuditEvent.objects.filter(action__startswith="task.").exists()


def test_a_run_whose_task_was_lost_is_queued_again_by_the_beat(live_acme: World) -> None:
    """The broker's Redis came back without its data: the run's task is gone, the run is
    still `queued` in PostgreSQL. The periodic sweep queues it again, once."""
    acme = live_acme
    set_limits()
    with tenant_context(acme.tenant):
        lost = queued_run(acme, "Asked just before Redis lost everything")
        fresh = queued_run(acme, "Asked a moment ago")
        AgentRun.objects.filter(id=lost.id).update(
            created_at=lost.created_at - timedelta(seconds=settings.AGENT_RUN_STALLED_SECONDS + 1)
        )
    with use_chat_model(FixedAnswerModel()):
        assert requeue_all_stalled_runs.delay().get() >= 1  # one tenant task per tenant
    with tenant_context(acme.tenant):
        lost.refresh_from_db()
        fresh.refresh_from_db()
        assert lost.status == AgentRun.Status.AWAITING_REVIEW
        assert fresh.status == AgentRun.Status.QUEUED  # its task may well be on its way
    with use_chat_model(FixedAnswerModel()):
        assert requeue_stalled_runs.delay(tenant_id=str(acme.tenant.id)).get() == 0
    [requeued] = audit_events(acme, "agent.runs_requeued")
    assert requeued.context == {"runs": [str(lost.id)], "reason": "stalled"}


def test_admitting_a_call_reads_the_plan_limits_from_the_cache_and_a_change_applies_at_once(
    acme: World, django_assert_num_queries: Any
) -> None:
    """The plan's limits travel with the cached registry, so admitting a call costs no
    database query; changing a plan's limits invalidates every tenant of the plan."""
    set_limits(requests_per_minute=2)
    with tenant_context(acme.tenant):
        limiter.check_request(user_id=acme.client.pk)  # fills the cache
        with django_assert_num_queries(0):
            limiter.check_request(user_id=acme.client.pk)
        # An operator raises the plan's limit (the admin saves the row): the next call sees it.
        set_limits(requests_per_minute=5)
        for _ in range(3):
            limiter.check_request(user_id=acme.client.pk)
        with pytest.raises(limiter.RateLimited):
            limiter.check_request(user_id=acme.client.pk)
