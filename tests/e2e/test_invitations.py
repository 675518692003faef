"""Inviting a client, all the way: the owner invites, the invitee creates her account at
the (local) identity provider, signs in, accepts, and lands in the chat as a client."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from tests.e2e.harness import login, logout, screenshot


def test_an_owner_invites_a_client_who_signs_up_accepts_and_chats(page: Page) -> None:
    email = f"dana.{uuid.uuid4().hex[:8]}@example.test"

    login(page, "nora@northwind.demo")
    page.get_by_role("link", name="Team").click()
    page.get_by_label("Email address").fill(email)
    expect(page.get_by_role("radio", name=re.compile("^Client"))).to_be_checked()
    page.get_by_role("button", name="Create invitation").click()
    expect(page.get_by_role("heading", name=f"Invitation ready for {email}")).to_be_visible()
    link = page.get_by_label(re.compile("Invitation link")).input_value()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/invite/inv_[0-9a-f]{32}_[\w-]{20,}/", link)
    expect(page.get_by_role("region", name="Pending invitations")).to_contain_text(email)
    screenshot(page, "team")
    logout(page)

    # Dana opens the link: who invited her, to what, as which role.
    page.goto(link)
    expect(page.get_by_role("heading", name="Join Northwind Coaching")).to_be_visible()
    expect(page.get_by_text(f"Nora Northwind invited {email} to join as client.")).to_be_visible()
    page.get_by_role("link", name="Create one at the local identity provider").click()

    # The provider's sign-up comes filled in from the invitation.
    expect(page.get_by_label("Email")).to_have_value(email)
    page.get_by_label("First name").fill("Dana")
    page.get_by_label("Last name").fill("Client")
    page.get_by_label("Password").fill("a-long-password")
    page.get_by_role("button", name="Create account").click()

    # Back on the invitation: she signs in (the provider knows her now) and accepts.
    expect(page.get_by_role("heading", name="Join Northwind Coaching")).to_be_visible()
    page.get_by_role("link", name="Sign in to accept").click()
    expect(page.get_by_role("button", name="Accept and continue")).to_be_visible()
    page.get_by_role("button", name="Accept and continue").click()

    expect(page).to_have_url(re.compile(r"/chat/$"))
    expect(page.get_by_role("status")).to_contain_text(
        "Welcome to Northwind Coaching! You joined as client."
    )
    me = page.request.get("/api/v1/me").json()
    assert (me["email"], me["role"], me["tenant"]["slug"]) == (email, "client", "northwind")

    # The link works once.
    page.goto(link)
    expect(
        page.get_by_role("heading", name="This invitation link is not valid or has expired")
    ).to_be_visible()
