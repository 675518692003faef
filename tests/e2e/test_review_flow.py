"""The product's central loop in a real browser: a client asks, the consultant edits the
AI draft in her queue and sends it, the client sees the edited answer — nobody reloads."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.harness import E2EApp, login, screenshot, wait_for_agent_runs

# A marker set on the page: still there later means the page was never reloaded.
NO_RELOAD = "window.__playbookNoReload"


@pytest.fixture
def consultant_page(browser: Browser, e2e_app: E2EApp) -> Iterator[Page]:
    """A second person at a second browser (her own cookies)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=e2e_app.url)
    try:
        yield context.new_page()
    finally:
        context.close()


def mark_no_reload(page: Page) -> None:
    page.evaluate(f"{NO_RELOAD} = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate(f"{NO_RELOAD} === true"), "the page was reloaded"


def test_client_asks_consultant_edits_and_client_sees_the_edited_answer(
    page: Page, consultant_page: Page, e2e_app: E2EApp
) -> None:
    client, consultant = page, consultant_page
    wait_for_agent_runs(e2e_app)  # the seeded questions' drafts are in the queue already

    # Nick, the consultant, has his queue open before the question arrives.
    login(consultant, "nick@northwind.demo")
    expect(consultant).to_have_url(re.compile(r"/app/$"))
    expect(consultant.get_by_role("heading", name="Review queue")).to_be_visible()
    mark_no_reload(consultant)
    screenshot(consultant, "dashboard")

    # Cara, his client, asks a new question in the chat.
    login(client, "cara@northwind.demo")
    expect(client).to_have_url(re.compile(r"/chat/$"))
    question = f"How many people should sit on an early-stage board? (ref {uuid.uuid4().hex[:6]})"
    client.get_by_label("Your question").fill(question)
    client.get_by_role("button", name="Ask").click()
    expect(client).to_have_url(re.compile(r"/chat/[0-9a-f-]{36}/$"))
    conversation_id = client.url.rstrip("/").rsplit("/", 1)[-1]
    mark_no_reload(client)
    expect(client.get_by_role("heading", name=question)).to_be_visible()

    # The agent drafts an answer; she is told her consultant is reviewing it.
    status = client.get_by_role("status").filter(has_text="Your consultant is reviewing")
    expect(status).to_be_visible(timeout=30_000)
    screenshot(client, "chat")

    # The draft appears in Nick's open queue by itself, beside Cara's question.
    draft = consultant.locator("[data-draft]").filter(
        has=consultant.locator(f"a[href='/app/conversations/{conversation_id}/']")
    )
    expect(draft).to_be_visible(timeout=15_000)
    expect(draft.locator(".question")).to_contain_text(question)
    draft_text = draft.locator(".answer").inner_text()
    assert "playbook" in draft_text.lower()  # the offline responder cites the playbook

    # He edits the draft and sends his version.
    draft.get_by_text("Edit", exact=True).click()
    editor = draft.get_by_label("Your version of the answer")
    expect(editor).to_be_focused()
    expect(editor).to_have_value(draft_text.strip())
    edited = "Keep it small: three to five people, with one independent director. — Nick"
    editor.fill(edited)
    screenshot(consultant, "queue")
    draft.get_by_role("button", name="Send edited answer").click()

    expect(draft).to_have_count(0)
    expect(consultant.locator(".toast")).to_have_text("Your edited answer was sent to Cara Client.")
    assert_not_reloaded(consultant)

    # Cara's open thread shows the edited answer (not the draft), without a reload.
    answer = client.locator("article[data-sender='agent']").filter(has_text=edited)
    expect(answer).to_be_visible(timeout=15_000)
    expect(answer).to_contain_text("reviewed by Nick Consultant")
    expect(client.get_by_text(draft_text.strip()[:60])).to_have_count(0)
    expect(client.get_by_role("status").filter(has_text="reviewing")).to_have_count(0)
    assert_not_reloaded(client)
    screenshot(client, "chat-answered")

    # The consultant's conversation view shows the sent message too.
    consultant.goto(f"/app/conversations/{conversation_id}/")
    expect(consultant.locator("article[data-sender='agent']")).to_contain_text(edited)


def test_the_queue_is_driven_from_the_keyboard(page: Page, e2e_app: E2EApp) -> None:
    wait_for_agent_runs(e2e_app)
    # Northwind reviews every answer: its seeded questions left drafts in the queue.
    login(page, "nora@northwind.demo")
    page.goto("/app/")
    drafts = page.locator("[data-draft]")
    expect(drafts.first).to_be_visible()
    before = drafts.count()

    page.keyboard.press("?")
    expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_hidden()

    # r opens the reject form of the selected (first) draft; Esc closes it again.
    first = drafts.first
    page.keyboard.press("r")
    note = first.get_by_label("Note for your team (optional; the client sees nothing)")
    expect(note).to_be_focused()
    page.keyboard.press("Escape")
    expect(note).to_be_hidden()

    # a approves and sends the selected draft.
    page.keyboard.press("a")
    expect(page.locator(".toast")).to_contain_text("The draft was sent to")
    expect(drafts).to_have_count(before - 1)
    expect(page.locator("#nav-queue-count")).to_have_text(str(before - 1) if before > 1 else "")
