"""The client's chat at /chat/: she starts a conversation, sees that her consultant is
reviewing the answer, sees only what was sent to her (never a draft), and the thread updates
itself (`chat-live`: a 204 while nothing changed). A question the limiter refuses is a clear
page or fragment (429 with Retry-After, 402, 503), and nothing of it is saved.

Most tests use `db`: the agent run a question queues starts when the request commits,
which never happens there, so the client sees "thinking". The tests of a paused run use
`live_db` and eager Celery (as tests/test_agents.py does).
"""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from django.utils.html import escape

from accounts.models import User
from agents.models import AgentRun, PlanEntitlement
from billing import limiter
from billing.models import PlanLimit, UsageEvent
from config.celery import app as celery_app
from conversations.models import Conversation, Message
from conversations.views.chat import title_from_question
from tenants.context import platform_context, tenant_context
from tests.factories import World, build_world
from tests.web import HTMX, browser, forget_redis, text

PLAN_DEFAULTS = importlib.import_module("agents.migrations.0002_plan_defaults")

QUESTION = "How should I prepare my first board meeting?"
REVIEWING = "Your consultant is reviewing the answer."
THINKING = "The assistant is preparing an answer…"
LIVE_URL = re.compile(r'id="thread-inner" hx-get="([^"]+)"')
# Every limit out of the way but the one a test is about (0 means no cap).
GENEROUS = {
    "requests_per_minute": 10_000,
    "user_requests_per_minute": 10_000,
    "tokens_per_minute": 10_000_000,
    "soft_cap_microdollars": 0,
    "hard_cap_microdollars": 0,
}


@pytest.fixture
def acme(db: None) -> Iterator[World]:
    world = build_world("acme")
    yield world
    forget_redis(world)


@pytest.fixture
def eager() -> Iterator[None]:
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.task_eager_propagates)
    conf.task_always_eager, conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_eager_propagates = previous


@pytest.fixture
def live_acme(live_db: None, eager: None) -> Iterator[World]:
    """Committed data: the client's question runs the agent (offline responder) at once."""
    with platform_context():
        for plan, kind, name, config in PLAN_DEFAULTS.ROWS:
            PlanEntitlement.objects.update_or_create(
                plan=plan, kind=kind, name=name, defaults={"config": config}
            )
    world = build_world("acme")
    yield world
    forget_redis(world)


def cleo(world: World) -> Client:
    return browser(world.client)


def her_conversation(world: World) -> Conversation:
    return world.conversations[0]


def thread_url(conversation: Conversation) -> str:
    return reverse("chat-thread", args=[conversation.id])


def live_url(page: str) -> str:
    found = LIVE_URL.search(page)
    assert found, "the thread polls for changes"
    return unescape(found.group(1))


def bubbles(page: str) -> list[tuple[str, str, str]]:
    """(sender, status, body) of each message bubble on the page."""
    found = re.findall(
        r'data-sender="(\w+)" data-status="(\w+)">.*?<div class="body">(.*?)</div>',
        page,
        flags=re.S,
    )
    return [(sender, status, unescape(body)) for sender, status, body in found]


def message_count(world: World) -> int:
    with tenant_context(world.tenant):
        return Message.objects.count()


def set_limits(**limits: int) -> None:
    with platform_context():
        PlanLimit.objects.update_or_create(plan="starter", defaults={**GENEROUS, **limits})


# --------------------------------------------------------------------------- a conversation


def test_a_client_asks_and_sees_that_her_consultant_is_reviewing(live_acme: World) -> None:
    world = live_acme
    home = cleo(world).get(reverse("chat"))
    assert home.status_code == 200
    assert "Ask something new" in text(home)
    assert "Strategy session (Cleo)" in text(home)  # her existing conversation
    assert "Strategy session (Cody)" not in text(home)

    response = cleo(world).post(reverse("chat-new"), {"question": f"  {QUESTION}  "})
    assert response.status_code == 302
    with tenant_context(world.tenant):
        conversation = Conversation.objects.get(title=QUESTION)
        run = AgentRun.objects.select_related("draft_message").get(conversation=conversation)
    assert conversation.client_id == world.client.pk
    assert response["Location"] == thread_url(conversation)
    assert run.status == AgentRun.Status.AWAITING_REVIEW
    assert run.draft_message is not None

    page = text(cleo(world).get(thread_url(conversation)))
    assert f"<h1>{QUESTION}</h1>" in page
    assert bubbles(page) == [("client", "sent", QUESTION)]  # never the draft
    assert 'data-run-status="reviewing"' in page
    assert REVIEWING in page
    assert escape(run.draft_message.body) not in page

    # Her consultant sees the draft in the same conversation.
    team_page = text(
        browser(world.consultant).get(reverse("app-conversation", args=[conversation.id]))
    )
    assert ("agent", "draft", run.draft_message.body) in bubbles(team_page)
    assert "Draft — waiting for review" in team_page

    # Approved: the answer reaches her thread on the next poll, and the status line goes.
    poll = live_url(page)
    assert cleo(world).get(poll).status_code == 204
    approved = browser(world.consultant).post(
        reverse("app-draft-decide", args=[run.draft_message.id, "approve"])
    )
    assert approved.status_code == 302
    fragment = cleo(world).get(poll)
    assert fragment.status_code == 200
    assert bubbles(text(fragment)) == [
        ("client", "sent", QUESTION),
        ("agent", "sent", run.draft_message.body),
    ]
    assert "data-run-status" not in text(fragment)
    assert "reviewed by Connor" in text(fragment)
    assert cleo(world).get(live_url(text(fragment))).status_code == 204


def test_a_rejected_draft_never_reaches_the_client(live_acme: World) -> None:
    world = live_acme
    conversation = her_conversation(world)
    assert (
        cleo(world)
        .post(reverse("chat-post", args=[conversation.id]), {"body": QUESTION})
        .status_code
        == 302
    )
    with tenant_context(world.tenant):
        draft = AgentRun.objects.get(trigger_message__body=QUESTION).draft_message
    assert draft is not None
    browser(world.consultant).post(reverse("app-draft-decide", args=[draft.id, "reject"]))
    page = text(cleo(world).get(thread_url(conversation)))
    assert bubbles(page) == [("client", "sent", "Hello from acme"), ("client", "sent", QUESTION)]
    assert escape(draft.body) not in page
    assert "data-run-status" not in page  # the run is over: no "reviewing" any more


def test_the_thread_polls_with_a_204_until_something_she_can_see_changes(acme: World) -> None:
    conversation = her_conversation(acme)
    page = text(cleo(acme).get(thread_url(conversation)))
    assert bubbles(page) == [("client", "sent", "Hello from acme")]
    poll = live_url(page)
    assert cleo(acme).get(poll).status_code == 204
    assert cleo(acme).get(poll, headers=HTMX).status_code == 204

    # A draft written for the team does not change what she sees.
    with tenant_context(acme.tenant):
        Message.objects.create(
            conversation=conversation,
            sender=Message.Sender.AGENT,
            status=Message.Status.DRAFT,
            body="An unreviewed draft.",
        )
    assert cleo(acme).get(poll).status_code == 204

    # Her consultant writes to her: the next poll brings it.
    reply = browser(acme.consultant).post(
        reverse("app-conversation-reply", args=[conversation.id]),
        {"body": "I'll call you at three."},
    )
    assert reply.status_code == 302
    fragment = cleo(acme).get(poll, headers=HTMX)
    assert fragment.status_code == 200
    assert bubbles(text(fragment)) == [
        ("client", "sent", "Hello from acme"),
        ("consultant", "sent", "I'll call you at three."),
    ]
    assert "<html" not in text(fragment)
    assert "An unreviewed draft." not in text(fragment)
    assert cleo(acme).get(live_url(text(fragment))).status_code == 204


def test_her_message_shows_at_once_and_says_the_assistant_is_thinking(acme: World) -> None:
    conversation = her_conversation(acme)
    url = reverse("chat-post", args=[conversation.id])
    response = cleo(acme).post(url, {"body": "What about the agenda?"}, headers=HTMX)
    assert response.status_code == 200
    fragment = text(response)
    assert bubbles(fragment)[-1] == ("client", "sent", "What about the agenda?")
    assert 'data-run-status="thinking"' in fragment
    assert THINKING in fragment
    assert '<span id="composer-error" hx-swap-oob="innerHTML"></span>' in fragment

    hers = cleo(acme)
    plain = hers.post(url, {"body": "And the minutes?"})
    assert plain.status_code == 302
    assert plain["Location"] == thread_url(conversation)
    assert "Sent." in text(hers.get(thread_url(conversation)))


def test_starting_a_conversation_with_htmx_opens_it(acme: World) -> None:
    long = "How " + "very " * 30 + "long can a title be?"
    response = cleo(acme).post(reverse("chat-new"), {"question": long}, headers=HTMX)
    assert response.status_code == 204
    with tenant_context(acme.tenant):
        conversation = Conversation.objects.get(client=acme.client, title__startswith="How very")
    assert response["HX-Redirect"] == thread_url(conversation)
    assert conversation.title == title_from_question(long)
    assert len(conversation.title) <= 81 and conversation.title.endswith("…")
    titled = cleo(acme).post(reverse("chat-new"), {"question": QUESTION, "title": " Board  prep "})
    assert titled.status_code == 302
    with tenant_context(acme.tenant):
        assert Conversation.objects.filter(client=acme.client, title="Board prep").exists()


def test_an_empty_or_too_long_question_is_refused_and_nothing_is_saved(acme: World) -> None:
    before = message_count(acme)
    conversation = her_conversation(acme)
    empty = cleo(acme).post(reverse("chat-new"), {"question": "   "})
    assert empty.status_code == 422
    assert "Write your question first." in text(empty)
    too_long = cleo(acme).post(reverse("chat-post", args=[conversation.id]), {"body": "x" * 20_001})
    assert too_long.status_code == 422
    assert "That is too long (20,001 characters; at most 20,000)." in text(too_long)
    fragment = cleo(acme).post(
        reverse("chat-post", args=[conversation.id]), {"body": ""}, headers=HTMX
    )
    assert fragment.status_code == 422
    assert fragment["HX-Retarget"] == "#composer-error"
    assert text(fragment).strip() == '<span role="alert">Write your question first.</span>'
    assert message_count(acme) == before
    with tenant_context(acme.tenant):
        assert Conversation.objects.count() == 2


def test_a_client_cannot_open_another_clients_conversation(acme: World) -> None:
    cody_conversation = acme.conversations[1]
    for name in ("chat-thread", "chat-live"):
        theirs = cleo(acme).get(reverse(name, args=[cody_conversation.id]))
        missing = cleo(acme).get(reverse(name, args=[uuid.uuid4()]))
        assert theirs.status_code == missing.status_code == 404
    posted = cleo(acme).post(reverse("chat-post", args=[cody_conversation.id]), {"body": "Hi"})
    assert posted.status_code == 404
    home = text(cleo(acme).get(reverse("chat")))
    assert "Strategy session (Cody)" not in home


# --------------------------------------------------------------------------- refusals


def test_a_client_over_her_rate_limit_gets_a_429_and_nothing_is_saved(acme: World) -> None:
    set_limits(user_requests_per_minute=1)
    conversation = her_conversation(acme)
    url = reverse("chat-post", args=[conversation.id])
    assert cleo(acme).post(url, {"body": "First question"}).status_code == 302
    saved = message_count(acme)

    refused = cleo(acme).post(url, {"body": "One question too many"})
    assert refused.status_code == 429
    retry_after = int(refused["Retry-After"])
    assert 1 <= retry_after <= 60
    page = text(refused)
    assert "Too many requests" in page
    assert f"Try again in {retry_after} seconds; nothing was sent." in page
    assert f"<strong>{retry_after} seconds</strong>" in page

    fragment = cleo(acme).post(url, {"body": "One question too many"}, headers=HTMX)
    assert fragment.status_code == 429
    assert 1 <= int(fragment["Retry-After"]) <= 60
    assert fragment["HX-Retarget"] == "#composer-error"
    assert "nothing was sent" in text(fragment)

    new = cleo(acme).post(reverse("chat-new"), {"question": "A new topic"})
    assert new.status_code == 429
    assert message_count(acme) == saved
    with tenant_context(acme.tenant):
        assert not Message.objects.filter(body="One question too many").exists()
        assert not Conversation.objects.filter(title="A new topic").exists()
        assert AgentRun.objects.count() == 1

    # Her consultant's reply is not a question to the assistant: never limited.
    reply = browser(acme.consultant).post(
        reverse("app-conversation-reply", args=[conversation.id]), {"body": "I'll call you."}
    )
    assert reply.status_code == 302


def test_a_tenant_past_its_hard_cap_gets_a_402_and_nothing_is_saved(acme: World) -> None:
    set_limits(hard_cap_microdollars=1_000)
    with tenant_context(acme.tenant):
        UsageEvent.objects.create(
            idempotency_key=uuid.uuid4().hex,
            kind=UsageEvent.Kind.MODEL,
            model="gpt-4o",
            cost_microdollars=5_000,
        )
    before = message_count(acme)
    refused = cleo(acme).post(reverse("chat-new"), {"question": QUESTION})
    assert refused.status_code == 402
    page = text(refused)
    assert "reached its usage limit for this month" in page
    assert escape(QUESTION) in page  # her question stays in the form
    assert not refused.has_header("Retry-After")
    assert message_count(acme) == before
    with tenant_context(acme.tenant):
        assert not Conversation.objects.filter(title=QUESTION).exists()


def test_with_the_limiter_down_the_question_is_a_503_and_nothing_is_saved(acme: World) -> None:
    before = message_count(acme)
    url = reverse("chat-post", args=[her_conversation(acme).id])
    with override_settings(LIMITER_REDIS_URL="redis://127.0.0.1:1/0"):
        limiter.reset_client()
        try:
            refused: Any = cleo(acme).post(url, {"body": QUESTION})
            fragment: Any = cleo(acme).post(url, {"body": QUESTION}, headers=HTMX)
        finally:
            limiter.reset_client()
    limiter.reset_client()
    assert refused.status_code == fragment.status_code == 503
    assert refused["Retry-After"] == fragment["Retry-After"] == "30"
    assert "briefly unavailable" in text(refused)
    assert escape(QUESTION) in text(refused)  # kept in the composer
    assert "briefly unavailable" in text(fragment)
    assert message_count(acme) == before
    # The chat itself still works.
    assert cleo(acme).get(thread_url(her_conversation(acme))).status_code == 200


def test_a_client_of_another_tenant_has_her_own_chat(acme: World) -> None:
    globex = build_world("globex")
    try:
        theirs: User = globex.client
        page = text(browser(theirs).get(reverse("chat")))
        assert thread_url(globex.conversations[0]) in page  # her own
        assert thread_url(acme.conversations[0]) not in page  # same title, acme's
        response = browser(theirs).get(thread_url(acme.conversations[0]))
        assert response.status_code == 404
    finally:
        forget_redis(globex)
