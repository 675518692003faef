"""The consultant's review queue at /app/: real drafts from real agent runs, her filters,
her decisions through the page (with HTMX and without), and the live updates.

Clients ask through the chat page; the run is queued when the request commits and Celery
runs it eagerly (`live_db`: LangGraph checkpoints from its own threads, so data is
committed). Without a playbook the offline responder is unsure (low confidence); a scripted
model asks for a handoff.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from langchain_core.messages.tool import ToolCall
from langchain_core.runnables import Runnable

from accounts.models import User
from agents.llm import use_chat_model
from agents.models import AgentRun, PlanEntitlement
from config.celery import app as celery_app
from conversations.models import Correction, Message
from tenants.context import platform_context, tenant_context
from tenants.templatetags.playbook_ui import ago, sources, waited
from tests.factories import World, build_world
from tests.web import HTMX, audit_events, browser, forget_redis, text

PLAN_DEFAULTS = importlib.import_module("agents.migrations.0002_plan_defaults")

PLAYBOOK = b"""# Discovery call playbook

Start every discovery call by asking the client what success looks like in twelve months.

## Pricing conversations

Never quote a price on the first call. Offer three packages: a diagnostic, a quarterly
retainer and a transformation programme. Anchor on the transformation programme first.
"""
UNSURE = "How should I decorate the office lobby?"  # asked before there is a playbook
PACKAGES = "How many packages should I offer a new client?"
CONTRACT = "Can you draft a custom contract for me?"  # the agent hands it over
DRAFT_ID = re.compile(r'<li class="draft" id="draft-([0-9a-f-]{36})"')


# --------------------------------------------------------------------------- fixtures


def seed_plan_defaults() -> None:
    with platform_context():
        for plan, kind, name, config in PLAN_DEFAULTS.ROWS:
            PlanEntitlement.objects.update_or_create(
                plan=plan, kind=kind, name=name, defaults={"config": config}
            )


@pytest.fixture
def eager() -> Iterator[None]:
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.task_eager_propagates)
    conf.task_always_eager, conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_eager_propagates = previous


class HandoffModel(FakeMessagesListChatModel):
    """A scripted chat model that asks for the consultant, then says so."""

    model_name: str = "handoff-model"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self


def handoff_model() -> HandoffModel:
    handoff = ToolCall(
        name="request_human_handoff",
        args={"reason": "Wants a custom contract"},
        id="call_1",
        type="tool_call",
    )
    return HandoffModel(
        responses=[
            AIMessage(content="", tool_calls=[handoff]),
            AIMessage(content="I've asked your consultant to take this one."),
        ]
    )


@dataclass
class Queue:
    world: World
    drafts: dict[str, Message]  # by question: UNSURE (Cleo), PACKAGES (Cleo), CONTRACT (Cody)

    def draft(self, question: str) -> Message:
        return self.drafts[question]


def ask(world: World, client: User, question: str) -> Message:
    """The client asks in her chat; returns the draft her question produced."""
    conversation = next(c for c in world.conversations if c.client_id == client.pk)
    response = browser(client).post(
        reverse("chat-post", args=[conversation.id]), {"body": question}
    )
    assert response.status_code == 302, text(response)
    with tenant_context(world.tenant):
        run = AgentRun.objects.select_related("draft_message").get(trigger_message__body=question)
        assert run.status == AgentRun.Status.AWAITING_REVIEW, (run.status, run.error)
        assert run.draft_message is not None
        return run.draft_message


def upload_playbook(world: World) -> None:
    response = browser(world.consultant).post(
        reverse("app-playbook-upload"),
        {"file": SimpleUploadedFile("discovery.md", PLAYBOOK, content_type="text/markdown")},
    )
    assert response.status_code == 302, text(response)


@pytest.fixture
def acme(live_db: None, eager: None) -> Iterator[Queue]:
    seed_plan_defaults()
    world = build_world("acme")
    drafts = {UNSURE: ask(world, world.client, UNSURE)}
    upload_playbook(world)
    drafts[PACKAGES] = ask(world, world.client, PACKAGES)
    with use_chat_model(handoff_model()):
        drafts[CONTRACT] = ask(world, world.other_client, CONTRACT)
    yield Queue(world, drafts)
    forget_redis(world)


def consultant(queue: Queue) -> Client:
    return browser(queue.world.consultant)


def shown(response: Any) -> list[str]:
    """The ids of the draft cards on a page, top to bottom."""
    return DRAFT_ID.findall(text(response))


def ids(queue: Queue, *questions: str) -> list[str]:
    return [str(queue.draft(q).id) for q in questions]


def decide(client: Client, draft: Message, action: str, *, htmx: bool = False, **form: str) -> Any:
    url = reverse("app-draft-decide", args=[draft.id, action])
    return client.post(url, form, headers=HTMX if htmx else {})


def client_sees(queue: Queue, client: User) -> list[str]:
    """The bodies of the messages in the client's chat thread (what she can read)."""
    conversation = next(c for c in queue.world.conversations if c.client_id == client.pk)
    page = text(browser(client).get(reverse("chat-thread", args=[conversation.id])))
    return [unescape(b) for b in re.findall(r'<div class="body">(.*?)</div>', page, flags=re.S)]


def status_of(queue: Queue, draft: Message) -> tuple[str, str]:
    with tenant_context(queue.world.tenant):
        message = Message.objects.get(id=draft.id)
        run = AgentRun.objects.get(draft_message=message)
    return message.status, run.status


# --------------------------------------------------------------------------- the list


def test_the_queue_shows_every_draft_newest_first_with_the_clients_question(
    acme: Queue,
) -> None:
    response = consultant(acme).get(reverse("app-queue"))
    assert response.status_code == 200
    assert shown(response) == ids(acme, CONTRACT, PACKAGES, UNSURE)
    page = text(response)
    for question in (UNSURE, PACKAGES):
        assert f'<span class="who-said">Cleo asked</span>{question}' in page
    assert "Cody asked</span>Can you draft a custom contract for me?" in page
    assert "The agent asked for you: Wants a custom contract" in page
    assert page.count("Handoff requested</span>") == 1
    assert page.count('<span class="badge danger">Low confidence</span>') == 1
    assert escape(acme.draft(PACKAGES).body) in page
    # Its citations, grouped by document, under the answer.
    assert '<ul class="citations" aria-label="Playbook passages cited">' in page
    assert re.search(r"<li title=\"[^\"]*\">(\[\d\])+ discovery</li>", page)
    assert "<div><dt>Waiting for you</dt><dd>3</dd></div>" in page
    assert 'aria-label="3 drafts waiting">3</span>' in page  # the count in the navigation


FILTERS: list[tuple[dict[str, str], list[str]]] = [
    ({"client": "cody"}, [CONTRACT]),
    ({"client": "cleo"}, [PACKAGES, UNSURE]),
    ({"attention": "handoff"}, [CONTRACT]),
    ({"attention": "low"}, [UNSURE]),
    ({"q": "packages"}, [PACKAGES]),  # the client's question
    ({"q": "LOBBY"}, [UNSURE]),
    ({"q": "Strategy session (Cody)"}, [CONTRACT]),  # the conversation's title
    ({"sort": "oldest"}, [UNSURE, PACKAGES, CONTRACT]),
    ({"client": "cleo", "sort": "oldest"}, [UNSURE, PACKAGES]),
    ({"q": "no such words anywhere"}, []),
]


def test_filters_narrow_the_queue_and_its_live_updates(acme: Queue) -> None:
    people = {"cleo": str(acme.world.client.pk), "cody": str(acme.world.other_client.pk)}
    mine = consultant(acme)
    for filters, expected in FILTERS:
        query = {k: people.get(v, v) if k == "client" else v for k, v in filters.items()}
        response = mine.get(reverse("app-queue"), query)
        assert response.status_code == 200, filters
        assert shown(response) == ids(acme, *expected), filters
        page = text(response)
        assert "Clear filters" in page
        if not expected:  # the empty state speaks of the filters, not of a clear queue
            assert "No drafts match these filters" in page
            assert "all caught up" not in page
        # The live poll asks with the same filters (else it would add every other draft).
        poller = re.search(r'<div id="queue-live" hx-get="([^"]+)"', page)
        assert poller is not None
        live = mine.get(unescape(poller.group(1)))
        assert live.status_code == 200
        assert DRAFT_ID.findall(text(live)) == ids(acme, *expected), filters


BAD_FILTERS = [
    ({"client": "cleo"}, "Choose a client from the list."),
    ({"client": "-1"}, "Choose a client from the list."),
    ({"client": "\u00b2"}, "Choose a client from the list."),  # "²": isdigit(), not int()
    ({"client": "9" * 5000}, "Choose a client from the list."),  # past int()'s 4300 digits
    ({"attention": "urgent"}, "Choose what needs attention from the list."),
    ({"conversation": "not-a-uuid"}, "That conversation id is not valid."),
]


def test_a_bad_filter_says_what_is_wrong_and_shows_nothing(acme: Queue) -> None:
    mine = consultant(acme)
    for query, error in BAD_FILTERS:
        response = mine.get(reverse("app-queue"), query)
        assert response.status_code == 200, query
        assert f'<p class="error" role="alert">{error}</p>' in text(response)
        assert shown(response) == [], query
        live = mine.get(reverse("app-queue-live"), query)
        assert live.status_code == 200
        assert DRAFT_ID.findall(text(live)) == [], query


def test_a_conversation_filter_shows_its_drafts_only(acme: Queue) -> None:
    cody = next(c for c in acme.world.conversations if c.client_id == acme.world.other_client.pk)
    response = consultant(acme).get(reverse("app-queue"), {"conversation": str(cody.id)})
    assert shown(response) == ids(acme, CONTRACT)
    assert f"Showing drafts of <strong>{cody.title}</strong> only." in text(response)


# --------------------------------------------------------------------------- decisions


def test_approve_with_htmx_removes_the_card_and_confirms_with_a_toast(acme: Queue) -> None:
    draft = acme.draft(PACKAGES)
    response = decide(consultant(acme), draft, "approve", htmx=True)
    assert response.status_code == 200
    assert json.loads(response["HX-Trigger"]) == {
        "toast": {"message": "The draft was sent to Cleo."}
    }
    fragment = text(response)
    assert 'id="nav-queue-count" hx-swap-oob="true" aria-label="2 drafts waiting">2<' in fragment
    assert "<html" not in fragment  # a fragment, not a page
    assert status_of(acme, draft) == (Message.Status.SENT, AgentRun.Status.COMPLETED)
    assert draft.body in client_sees(acme, acme.world.client)
    [event] = audit_events(acme.world, "review.approved")
    assert (event.actor_id, event.resource_id) == (str(acme.world.consultant.pk), str(draft.id))
    assert shown(consultant(acme).get(reverse("app-queue"))) == ids(acme, CONTRACT, UNSURE)


def test_edit_without_htmx_redirects_back_with_a_message(acme: Queue) -> None:
    draft = acme.draft(PACKAGES)
    mine = consultant(acme)
    edited = "Offer three packages, and lead with the transformation programme."
    back = "/app/?client=" + str(acme.world.client.pk)
    response = decide(mine, draft, "edit", text=f"  {edited}  ", next=back)
    assert response.status_code == 302
    assert response["Location"] == back
    page = text(mine.get(back))
    assert "Your edited answer was sent to Cleo." in page
    assert shown(mine.get(reverse("app-queue"))) == ids(acme, CONTRACT, UNSURE)
    assert status_of(acme, draft) == (Message.Status.SENT, AgentRun.Status.COMPLETED)
    seen = client_sees(acme, acme.world.client)
    assert edited in seen
    assert draft.body not in seen
    with tenant_context(acme.world.tenant):
        correction = Correction.objects.get()
    assert (correction.kind, correction.question, correction.final) == ("edit", PACKAGES, edited)
    assert len(audit_events(acme.world, "review.edited")) == 1


def test_override_and_reject(acme: Queue) -> None:
    mine = consultant(acme)
    own = "I will call you to talk about the contract."
    overridden = decide(mine, acme.draft(CONTRACT), "override", htmx=True, text=own)
    assert overridden.status_code == 200
    assert json.loads(overridden["HX-Trigger"])["toast"]["message"] == (
        "Your own answer was sent to Cody."
    )
    assert own in client_sees(acme, acme.world.other_client)

    rejected = decide(mine, acme.draft(UNSURE), "reject", note="Off topic; I will call her.")
    assert rejected.status_code == 302
    assert rejected["Location"] == "/app/"
    assert "Draft rejected: nothing was sent to Cleo." in text(mine.get("/app/"))
    assert status_of(acme, acme.draft(UNSURE)) == (
        Message.Status.REJECTED,
        AgentRun.Status.COMPLETED,
    )
    assert acme.draft(UNSURE).body not in client_sees(acme, acme.world.client)
    assert len(audit_events(acme.world, "review.overridden")) == 1
    [event] = audit_events(acme.world, "review.rejected")
    assert event.context == {"note": "Off topic; I will call her."}


def test_an_empty_answer_is_refused_and_nothing_is_sent(acme: Queue) -> None:
    draft = acme.draft(PACKAGES)
    mine = consultant(acme)
    for action in ("edit", "override"):
        response = decide(mine, draft, action, htmx=True, text="   ")
        assert response.status_code == 422
        fragment = text(response)
        assert "Write the answer to send; nothing was sent." in fragment
        assert f'<details data-editor="{action}" open>' in fragment  # the editor stays open
        assert f'id="draft-{draft.id}"' in fragment
    plain = decide(mine, draft, "edit", text="")
    assert plain.status_code == 302
    assert "Write the answer to send; nothing was sent." in text(mine.get(plain["Location"]))
    assert status_of(acme, draft) == (Message.Status.DRAFT, AgentRun.Status.AWAITING_REVIEW)
    assert draft.body not in client_sees(acme, acme.world.client)
    assert audit_events(acme.world, "review.edited") == []


def test_a_draft_decided_twice_is_a_409_and_changes_nothing(acme: Queue) -> None:
    draft = acme.draft(PACKAGES)
    first = decide(consultant(acme), draft, "approve", htmx=True)
    assert first.status_code == 200
    # A second consultant, from a page she loaded before the first decision.
    olivia = browser(acme.world.owner)
    again = decide(olivia, draft, "override", htmx=True, text="Something else entirely.")
    assert again.status_code == 409
    fragment = text(again)
    assert "This draft was already reviewed." in fragment
    assert "Connor decided it" in fragment
    plain = decide(olivia, draft, "reject")
    assert plain.status_code == 302
    assert "This draft was already reviewed." in text(olivia.get(plain["Location"]))
    with tenant_context(acme.world.tenant):
        message = Message.objects.get(id=draft.id)
        assert Correction.objects.count() == 0
    assert (message.status, message.body, message.reviewed_by_id) == (
        Message.Status.SENT,
        draft.body,
        acme.world.consultant.pk,
    )
    assert "Something else entirely." not in client_sees(acme, acme.world.client)
    assert len(audit_events(acme.world, "review.approved")) == 1
    assert audit_events(acme.world, "review.overridden") == []
    assert audit_events(acme.world, "review.rejected") == []


def test_an_unknown_decision_or_a_foreign_next_is_harmless(acme: Queue) -> None:
    draft = acme.draft(PACKAGES)
    mine = consultant(acme)
    assert decide(mine, draft, "publish").status_code == 404
    assert status_of(acme, draft) == (Message.Status.DRAFT, AgentRun.Status.AWAITING_REVIEW)
    # After the decision the browser goes back to the queue, never to another site.
    response = decide(mine, draft, "approve", next="https://evil.example/phish")
    assert response.status_code == 302
    assert response["Location"] == "/app/"


# --------------------------------------------------------------------------- live updates


def poll(client: Client, shown_ids: list[str], waiting: int, **filters: str) -> Any:
    return client.get(
        reverse("app-queue-live"), {"shown": shown_ids, "waiting": str(waiting), **filters}
    )


def test_the_live_poll_is_a_204_until_the_queue_changes(acme: Queue) -> None:
    mine = consultant(acme)
    on_screen = shown(mine.get(reverse("app-queue")))
    unchanged = poll(mine, on_screen, 3)
    assert unchanged.status_code == 204
    assert unchanged.content == b""

    # A new question: its card arrives at the top (out of band), the count goes up.
    newer = ask(acme.world, acme.world.client, "When do I send the proposal?")
    changed = poll(mine, on_screen, 3)
    assert changed.status_code == 200
    fragment = text(changed)
    assert '<ol hx-swap-oob="afterbegin:#queue-list">' in fragment
    assert DRAFT_ID.findall(fragment) == [str(newer.id)]
    assert "When do I send the proposal?" in fragment
    assert 'aria-label="4 drafts waiting">4<' in fragment
    assert 'name="waiting" value="4"' in fragment  # the poller's next baseline
    on_screen = [str(newer.id), *on_screen]
    assert poll(mine, on_screen, 4).status_code == 204

    # Another consultant decides a draft: it leaves this consultant's screen.
    decide(browser(acme.world.owner), acme.draft(UNSURE), "reject")
    gone = poll(mine, on_screen, 4)
    assert gone.status_code == 200
    fragment = text(gone)
    assert f'<li id="draft-{acme.draft(UNSURE).id}" hx-swap-oob="delete"></li>' in fragment
    assert DRAFT_ID.findall(fragment) == []
    assert 'aria-label="3 drafts waiting">3<' in fragment
    on_screen.remove(str(acme.draft(UNSURE).id))
    assert poll(mine, on_screen, 3).status_code == 204


def test_the_oldest_first_poll_appends_new_cards_at_the_end(acme: Queue) -> None:
    mine = consultant(acme)
    on_screen = shown(mine.get(reverse("app-queue"), {"sort": "oldest"}))
    newer = ask(acme.world, acme.world.client, "When do I send the proposal?")
    fragment = text(poll(mine, on_screen, 3, sort="oldest"))
    assert '<ol hx-swap-oob="beforeend:#queue-list">' in fragment
    assert DRAFT_ID.findall(fragment) == [str(newer.id)]


def test_the_live_poll_ignores_ids_that_are_not_drafts(acme: Queue) -> None:
    mine = consultant(acme)
    on_screen = shown(mine.get(reverse("app-queue")))
    response = poll(mine, [*on_screen, "not-a-uuid", "<script>"], 3)
    assert response.status_code == 204


# --------------------------------------------------------------------------- what cards show


def test_citations_are_grouped_by_document_in_order() -> None:
    citations = [
        {"n": 1, "document": "d1", "title": "Pricing", "quote": "Never quote on a first call."},
        {"n": 2, "document": "d2", "title": "Agenda"},
        {"n": 3, "document": "d1", "title": "Pricing", "quote": "Offer three packages."},
        "not a citation",
        {"document": "d3"},
    ]
    assert sources(citations) == [
        {
            "title": "Pricing",
            "numbers": [1, 3],
            "quotes": ["Never quote on a first call.", "Offer three packages."],
        },
        {"title": "Agenda", "numbers": [2], "quotes": []},
        {"title": "Playbook", "numbers": [5], "quotes": []},
    ]
    assert sources(None) == []


def test_times_read_like_a_person_would_say_them() -> None:
    now = timezone.now()
    assert ago(now - timedelta(seconds=20)) == "just now"
    assert ago(now - timedelta(minutes=5, seconds=10)) == "5\xa0minutes ago"
    assert ago(None) == ""
    assert waited(now - timedelta(seconds=5)) == "under a minute"
    assert waited(now - timedelta(days=2, hours=3)) == "2\xa0days"
    assert waited(None) == ""
