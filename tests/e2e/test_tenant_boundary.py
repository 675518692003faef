"""The tenant boundary seen from the browser: another organisation's URL is a 404 page."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.harness import E2EApp, login, logout, wait_for_agent_runs


def test_a_user_of_tenant_b_who_pastes_a_tenant_a_url_gets_the_404_page(
    page: Page, e2e_app: E2EApp
) -> None:
    wait_for_agent_runs(e2e_app)
    # Nick (Northwind) copies the URLs of a conversation and of a playbook document.
    login(page, "nick@northwind.demo")
    page.goto("/app/conversations/")
    link = page.get_by_role("link", name="Preparing my first board meeting")
    conversation_url = link.get_attribute("href")
    assert conversation_url and re.fullmatch(r"/app/conversations/[0-9a-f-]{36}/", conversation_url)
    response = page.goto(conversation_url)
    assert response is not None and response.status == 200
    logout(page)

    # Cara (Northwind's client) has a chat URL too.
    login(page, "cara@northwind.demo")
    chat_link = page.get_by_role("link", name=re.compile("Preparing my first board meeting"))
    chat_url = chat_link.get_attribute("href")
    assert chat_url and chat_url.startswith("/chat/")
    logout(page)

    # Ben (Bluebird) pastes Nick's URL: the same 404 page as for a page that never existed.
    login(page, "ben@bluebird.demo")
    response = page.goto(conversation_url)
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="We can't find that page")).to_be_visible()
    expect(page.get_by_text("Preparing my first board meeting")).to_have_count(0)
    missing = page.goto("/app/conversations/00000000-0000-4000-8000-000000000000/")
    assert missing is not None and missing.status == 404
    logout(page)

    # Cleo (Bluebird's client) pastes Cara's chat URL: 404 too.
    login(page, "cleo@bluebird.demo")
    response = page.goto(chat_url)
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="We can't find that page")).to_be_visible()
    # And a client who opens the dashboard gets the 403 page, not the team's data.
    response = page.goto("/app/")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="You don't have access to this page")).to_be_visible()
