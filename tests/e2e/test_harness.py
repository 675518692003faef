"""The harness itself: a real sign-in through the local provider, and a refused one."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.harness import login, logout, screenshot


def test_a_consultant_signs_in_and_out_through_the_provider(page: Page) -> None:
    login(page, "nick@northwind.demo")
    screenshot(page, "signed-in")

    me = page.request.get("/api/v1/me")
    assert me.status == 200
    body = me.json()
    assert body["name"] == "Nick Consultant"
    assert body["email"] == "nick@northwind.demo"
    assert body["tenant"]["slug"] == "northwind"
    assert body["role"] == "consultant"
    assert body["auth"] == "session"

    logout(page)
    assert page.request.get("/api/v1/me").status in (401, 403)


def test_a_wrong_password_is_refused_by_the_provider(page: Page) -> None:
    page.goto("/login/")
    page.get_by_role("link", name="Continue to sign-in").click()
    page.get_by_label("Username").fill("nick@northwind.demo")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("alert")).to_have_text("Unknown username or wrong password.")
    expect(page).to_have_url(re.compile(r"/idp/login/"))
    assert page.request.get("/api/v1/me").status in (401, 403)
