"""The team page (/app/team/), invitations (/invite/<token>/) and support access
(/app/support/) as people use them: who may invite whom, the emailed link, accepting it,
role changes and their rules, deactivation ending a session at the next request, and ending
a support session, after which the database no longer admits it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from accounts import actions
from accounts.models import Invitation, Membership, SupportSession, User
from accounts.support import open_support_session
from tenants.context import TenantContextRefused, tenant_context
from tests.factories import UserFactory, World, build_world
from tests.web import audit_events, browser, forget_redis, login_redirect, role_of, text, with_admin

LINK = re.compile(r'id="invitation-link" readonly value="([^"]+)"')


@pytest.fixture
def acme(db: None) -> Iterator[World]:
    world = build_world("acme")
    yield world
    forget_redis(world)


@pytest.fixture
def ada(acme: World) -> User:
    return with_admin(acme)


def invite(client: Client, email: str, role: str, capture: Any) -> tuple[Any, str]:
    """Invite through the team page; returns (response, the link it shows)."""
    with capture(execute=True):  # the email goes once the request's transaction commits
        response = client.post(reverse("app-team-invite"), {"email": email, "role": role})
    found = LINK.search(text(response))
    return response, unescape(found.group(1)) if found else ""


def invitations(world: World) -> list[Invitation]:
    with tenant_context(world.tenant):
        return list(Invitation.objects.order_by("created_at"))


def path_of(link: str) -> str:
    return link.removeprefix("http://127.0.0.1:8000").removeprefix("http://testserver")


def newcomer(world: World, email: str) -> User:
    """An account the identity provider placed in the tenant at first sign-in, no role yet."""
    return UserFactory.create(username=email, email=email, tenant=world.tenant, first_name="Nina")


# --------------------------------------------------------------------------- invitations


def test_an_invitation_from_the_team_page_to_a_joined_client(
    acme: World, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    connor = browser(acme.consultant)
    response, link = invite(
        connor, "  Nina@Example.test ", "client", django_capture_on_commit_callbacks
    )
    assert response.status_code == 200
    page = text(response)
    assert "Invitation ready for nina@example.test" in page
    assert "We emailed them this link." in page
    token = path_of(link).removeprefix("/invite/").rstrip("/")
    assert path_of(link) == f"/invite/{token}/"
    assert re.fullmatch(rf"inv_{acme.tenant.id.hex}_[A-Za-z0-9_-]{{32}}", token)

    # The email names who invited her, to what, and carries the link.
    [email] = mailoutbox
    assert email.to == ["nina@example.test"]
    assert email.subject == "Connor invited you to Acme"
    assert link in email.body
    assert "as client" in email.body

    # Only the token's SHA-256 is stored; the link is never shown again.
    [invitation] = invitations(acme)
    assert (invitation.email, invitation.role, invitation.invited_by_id) == (
        "nina@example.test",
        "client",
        acme.consultant.pk,
    )
    assert invitation.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(invitation.__dict__)
    team = text(connor.get(reverse("app-team")))
    assert token not in team
    assert "nina@example.test" in team  # pending
    [created] = audit_events(acme, "invitation.created")
    assert created.context == {"email": "nina@example.test", "role": "client"}
    assert token not in repr(created.context)

    # Anyone with the link sees who invited whom, and is asked to sign in.
    visitor = Client().get(path_of(link))
    assert visitor.status_code == 200
    seen = text(visitor)
    assert "<h1>Join Acme</h1>" in seen
    assert (
        "Connor invited <strong>nina@example.test</strong> to join as <strong>client</strong>"
        in seen
    )
    assert f'href="/oidc/authenticate/?next=/invite/{token}/"' in seen

    # Signed in with that address: she accepts and has the role.
    nina = browser(newcomer(acme, "nina@example.test"))
    assert "Accept and continue" in text(nina.get(path_of(link)))
    accepted = nina.post(path_of(link))
    assert accepted.status_code == 302
    assert accepted["Location"] == "/"
    with tenant_context(acme.tenant):
        account = User.objects.get(email="nina@example.test")
    assert role_of(acme, account) == "client"
    assert nina.get("/")["Location"] == "/chat/"
    assert "Welcome to Acme! You joined as client." in text(nina.get("/chat/"))
    [joined] = audit_events(acme, "invitation.accepted")
    assert joined.context == {"role": "client", "previous_role": "client"}
    assert joined.actor_id == str(account.pk)

    # Used: the link is the "not valid" page, for her and for anyone else.
    for client in (nina, Client()):
        gone = client.get(path_of(link))
        assert gone.status_code == 404
        assert "This invitation link is not valid or has expired" in text(gone)
    assert "No pending invitations." in text(connor.get(reverse("app-team")))


@pytest.mark.parametrize(
    ("who", "role", "refusal"),
    [
        (
            "consultant",
            "consultant",
            "Your role (consultant) cannot give someone the consultant role.",
        ),
        ("consultant", "admin", "Your role (consultant) cannot give someone the admin role."),
        ("admin", "owner", "Your role (admin) cannot give someone the owner role."),
        ("owner", "boss", "Choose a role."),
    ],
)
def test_who_may_invite_whom(
    acme: World,
    ada: User,
    who: str,
    role: str,
    refusal: str,
    django_capture_on_commit_callbacks: Any,
    mailoutbox: list[Any],
) -> None:
    inviter = {"consultant": acme.consultant, "admin": ada, "owner": acme.owner}[who]
    response, link = invite(
        browser(inviter), "vic@example.test", role, django_capture_on_commit_callbacks
    )
    assert response.status_code == 400
    assert escape(refusal) in text(response)
    assert 'value="vic@example.test"' in text(response)  # kept in the form
    assert link == ""
    assert invitations(acme) == []
    assert mailoutbox == []


def test_each_role_may_invite_the_roles_below_it(
    acme: World, ada: User, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    capture = django_capture_on_commit_callbacks
    assert invite(browser(ada), "carl@example.test", "consultant", capture)[0].status_code == 200
    assert invite(browser(ada), "adam@example.test", "admin", capture)[0].status_code == 200
    assert invite(browser(acme.owner), "oona@example.test", "owner", capture)[0].status_code == 200
    assert [(i.email, i.role) for i in invitations(acme)] == [
        ("carl@example.test", "consultant"),
        ("adam@example.test", "admin"),
        ("oona@example.test", "owner"),
    ]
    assert len(mailoutbox) == 3
    # The form offers only what the role may give.
    page = text(browser(acme.consultant).get(reverse("app-team")))
    assert re.findall(r'name="role" value="(\w+)"', page) == ["client"]
    page = text(browser(ada).get(reverse("app-team")))
    assert re.findall(r'name="role" value="(\w+)"', page) == ["admin", "consultant", "client"]


def test_a_bad_address_or_a_member_is_not_invited(
    acme: World, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    owner = browser(acme.owner)
    bad, _ = invite(owner, "not an address", "client", django_capture_on_commit_callbacks)
    assert bad.status_code == 400
    assert "Enter a valid email address." in text(bad)
    member, _ = invite(owner, "CLEO@acme.test", "client", django_capture_on_commit_callbacks)
    assert member.status_code == 400
    assert "cleo@acme.test is already a member of your organisation." in text(member)
    assert invitations(acme) == []
    assert mailoutbox == []


def test_a_new_invitation_replaces_the_earlier_one(
    acme: World, django_capture_on_commit_callbacks: Any
) -> None:
    owner = browser(acme.owner)
    _, first = invite(owner, "nina@example.test", "client", django_capture_on_commit_callbacks)
    _, second = invite(owner, "nina@example.test", "consultant", django_capture_on_commit_callbacks)
    assert Client().get(path_of(first)).status_code == 404
    assert "join as <strong>consultant</strong>" in text(Client().get(path_of(second)))


def test_an_invitation_for_another_address_is_refused(
    acme: World, django_capture_on_commit_callbacks: Any
) -> None:
    _, link = invite(
        browser(acme.owner), "nina@example.test", "admin", django_capture_on_commit_callbacks
    )
    cody = browser(acme.other_client)  # signed in, but not as nina
    assert "Accept and continue" in text(cody.get(path_of(link)))
    refused = cody.post(path_of(link))
    assert refused.status_code == 403
    assert "This invitation is for nina@example.test; you are signed in as cody@acme.test." in text(
        refused
    )
    assert role_of(acme, acme.other_client) == "client"
    [invitation] = invitations(acme)
    assert invitation.accepted_at is None
    assert audit_events(acme, "invitation.accepted") == []
    # Nina can still use it.
    assert browser(newcomer(acme, "nina@example.test")).post(path_of(link)).status_code == 302


def test_an_invitation_to_another_organisation_is_refused(
    acme: World, django_capture_on_commit_callbacks: Any
) -> None:
    globex = build_world("globex")
    try:
        _, link = invite(
            browser(acme.owner), "cleo@globex.test", "client", django_capture_on_commit_callbacks
        )
        theirs = browser(globex.client)  # the invited address, but an account of globex
        for response in (theirs.get(path_of(link)), theirs.post(path_of(link))):
            assert response.status_code == 403
            assert "You are signed in to another organisation" in text(response)
            assert "This invitation is to join Acme, but you are signed in to Globex." in text(
                response
            )
        assert invitations(acme)[0].accepted_at is None
        with tenant_context(globex.tenant):
            assert Membership.objects.get(user=globex.client).role == "client"
    finally:
        forget_redis(globex)


def test_a_revoked_expired_or_made_up_link_is_the_no_longer_valid_page(
    acme: World, django_capture_on_commit_callbacks: Any
) -> None:
    owner = browser(acme.owner)
    capture = django_capture_on_commit_callbacks
    _, revoked = invite(owner, "rita@example.test", "client", capture)
    _, expired = invite(owner, "eve@example.test", "client", capture)
    rita = next(i for i in invitations(acme) if i.email == "rita@example.test")
    response = owner.post(reverse("app-team-invitation-revoke", args=[rita.id]))
    assert response.status_code == 302
    assert "The invitation for rita@example.test was revoked." in text(
        owner.get(reverse("app-team"))
    )
    assert len(audit_events(acme, "invitation.revoked")) == 1
    with tenant_context(acme.tenant):
        Invitation.objects.filter(email="eve@example.test").update(
            expires_at=timezone.now() - timedelta(minutes=1)
        )
    token = path_of(revoked).removeprefix("/invite/").rstrip("/")
    made_up = [
        f"/invite/{token[:-4]}abcd/",  # another secret
        f"/invite/inv_{'0' * 32}_{token.split('_', 2)[2]}/",  # another tenant
        "/invite/inv_nothing/",
        "/invite/hello/",
    ]
    for path in [path_of(revoked), path_of(expired), *made_up]:
        for client in (Client(), browser(newcomer(acme, f"{uuid.uuid4().hex[:8]}@example.test"))):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "This invitation link is not valid or has expired" in text(response)
        accepted = browser(acme.other_client).post(path)
        assert accepted.status_code == 404, path
    assert role_of(acme, acme.other_client) == "client"
    assert audit_events(acme, "invitation.accepted") == []
    # A consultant cannot revoke an invitation she could not have made.
    _, adam = invite(owner, "adam@example.test", "admin", capture)
    adam_id = next(i.id for i in invitations(acme) if i.email == "adam@example.test")
    connor = browser(acme.consultant)
    connor.post(reverse("app-team-invitation-revoke", args=[adam_id]))
    assert "cannot give someone the admin role" in text(connor.get(reverse("app-team")))
    assert Client().get(path_of(adam)).status_code == 200


# --------------------------------------------------------------------------- roles


def member_change(client: Client, user: User, **form: str) -> Any:
    return client.post(reverse("app-team-member", args=[user.pk]), form)


def test_an_owner_changes_a_role_and_it_is_audited(acme: World) -> None:
    owner = browser(acme.owner)
    response = member_change(owner, acme.consultant, change="role", role="admin")
    assert response.status_code == 302
    assert response["Location"] == "/app/team/"
    assert "Connor is now admin." in text(owner.get(reverse("app-team")))
    assert role_of(acme, acme.consultant) == "admin"
    [event] = audit_events(acme, "member.role_changed")
    assert (event.actor_id, event.resource_id, event.context) == (
        str(acme.owner.pk),
        str(acme.consultant.pk),
        {"from": "consultant", "to": "admin"},
    )
    # Connor's next page already follows his new role.
    assert browser(acme.consultant).get(reverse("app-settings")).status_code == 200


@pytest.mark.parametrize(
    ("actor", "target", "form", "refusal"),
    [
        ("owner", "owner", {"change": "role", "role": "admin"}, "You cannot change your own role"),
        ("owner", "owner", {"change": "deactivate"}, "You cannot deactivate your own account."),
        ("admin", "owner", {"change": "role", "role": "client"}, "Your role (admin) cannot give"),
        ("admin", "owner", {"change": "deactivate"}, "Your role (admin) cannot give"),
        (
            "admin",
            "consultant",
            {"change": "role", "role": "owner"},
            "cannot give someone the owner",
        ),
        ("consultant", "client", {"change": "role", "role": "consultant"}, "cannot give someone"),
        ("consultant", "admin", {"change": "deactivate"}, "Your role (consultant) cannot give"),
        ("owner", "client", {"change": "role", "role": "boss"}, "Choose a role."),
    ],
)
def test_role_rules_refuse_with_a_reason_and_change_nothing(
    acme: World, ada: User, actor: str, target: str, form: dict[str, str], refusal: str
) -> None:
    people = {
        "owner": acme.owner,
        "admin": ada,
        "consultant": acme.consultant,
        "client": acme.client,
    }
    before = {u.pk: (role_of(acme, u), u.is_active) for u in people.values()}
    response = member_change(browser(people[actor]), people[target], **form)
    assert response.status_code == 400
    assert escape(refusal) in text(response)
    with tenant_context(acme.tenant):
        active = {u.pk: User.objects.get(pk=u.pk).is_active for u in people.values()}
    after = {u.pk: (role_of(acme, u), active[u.pk]) for u in people.values()}
    assert after == before
    assert audit_events(acme, "member.role_changed") == []
    assert audit_events(acme, "member.deactivated") == []


def test_the_team_page_offers_changes_only_where_the_role_allows(acme: World, ada: User) -> None:
    page = text(browser(ada).get(reverse("app-team")))
    assert f'action="{reverse("app-team-member", args=[acme.consultant.pk])}"' in page
    assert f'action="{reverse("app-team-member", args=[acme.owner.pk])}"' not in page
    assert f'action="{reverse("app-team-member", args=[ada.pk])}"' not in page  # herself
    assert '<span class="badge brand">You</span>' in page


def test_a_deactivated_person_is_signed_out_at_the_next_request(acme: World) -> None:
    cody = browser(acme.other_client)
    thread = reverse("chat-thread", args=[acme.conversations[1].id])
    assert cody.get(thread).status_code == 200

    owner = browser(acme.owner)
    response = member_change(owner, acme.other_client, change="deactivate")
    assert response.status_code == 302
    assert "Cody was deactivated: they can no longer sign in." in text(owner.get("/app/team/"))
    [event] = audit_events(acme, "member.deactivated")
    assert (event.actor_id, event.resource_id) == (str(acme.owner.pk), str(acme.other_client.pk))

    # His open browser is anonymous now: every page sends him to the login page.
    refused = cody.get(thread)
    assert refused.status_code == 302
    assert refused["Location"] == login_redirect(thread)
    live = reverse("chat-live", args=[acme.conversations[1].id])
    polled = cody.get(live, headers={"HX-Request": "true"})
    assert (polled.status_code, polled["HX-Redirect"]) == (401, login_redirect(live))
    posted = cody.post(reverse("chat-post", args=[acme.conversations[1].id]), {"body": "Hi?"})
    assert posted.status_code == 302
    with tenant_context(acme.tenant):
        assert not acme.conversations[1].messages.filter(body="Hi?").exists()
    assert "Deactivated</span>" in text(owner.get("/app/team/"))

    # Reactivated: he signs in again.
    assert member_change(owner, acme.other_client, change="reactivate").status_code == 302
    assert len(audit_events(acme, "member.reactivated")) == 1
    with tenant_context(acme.tenant):
        again = User.objects.get(pk=acme.other_client.pk)
    signed_in_again = browser(again)  # a fresh sign-in
    assert signed_in_again.get(thread).status_code == 200


def test_a_session_ended_by_deactivation_stays_ended_after_reactivation(acme: World) -> None:
    cody = browser(acme.other_client)  # e.g. the browser of a laptop he lost
    owner = browser(acme.owner)
    assert member_change(owner, acme.other_client, change="deactivate").status_code == 302
    assert member_change(owner, acme.other_client, change="reactivate").status_code == 302
    assert cody.get(reverse("chat")).status_code == 302  # he signs in again


def test_a_consultant_may_deactivate_a_client(acme: World) -> None:
    response = member_change(browser(acme.consultant), acme.client, change="deactivate")
    assert response.status_code == 302
    with tenant_context(acme.tenant):
        assert User.objects.get(pk=acme.client.pk).is_active is False


# --------------------------------------------------------------------------- support access


@pytest.fixture
def staff(db: None) -> User:
    return UserFactory.create(
        username="sam@platform.test", tenant=None, is_staff=True, first_name="Sam"
    )


def admitted_conversations(world: World, session: SupportSession) -> set[str]:
    """What the database shows the support session of `session` (nothing once the database
    refuses to enter it)."""
    try:
        with (
            tenant_context(world.tenant, support_session=session.id),
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT id::text FROM conversations_conversation")
            return {row[0] for row in cursor.fetchall()}
    except TenantContextRefused:
        return set()


def test_an_admin_sees_support_sessions_and_ends_one_now(
    acme: World, ada: User, staff: User
) -> None:
    reason = "Ticket 4711: the client cannot see her last conversation"
    session = open_support_session(staff=staff, tenant=acme.tenant, reason=reason)
    old = open_support_session(staff=staff, tenant=acme.tenant, reason="Ticket 12: old issue")
    with tenant_context(acme.tenant):
        SupportSession.objects.filter(id=old.id).update(ended_at=timezone.now())
    assert admitted_conversations(acme, session) == acme.conversation_ids

    admin = browser(ada)
    page = text(admin.get(reverse("app-support")))
    assert '<th scope="row">Sam</th>' in page
    assert reason in page and "Ticket 12: old issue" in page
    assert page.count("Active now") == 1
    end_url = reverse("app-support-end", args=[session.id])
    assert f'action="{end_url}"' in page
    assert reverse("app-support-end", args=[old.id]) not in page  # closed: nothing to end

    ended = admin.post(end_url)
    assert ended.status_code == 302
    assert ended["Location"] == "/app/support/"
    page = text(admin.get(reverse("app-support")))
    assert "Support access ended. Playbook support no longer sees your data." in page
    assert "Active now" not in page
    with tenant_context(acme.tenant):
        assert SupportSession.objects.get(id=session.id).ended_at is not None
    [event] = audit_events(acme, "support.session_ended_by_tenant")
    assert (event.actor_id, event.resource_id, event.context) == (
        str(ada.pk),
        str(session.id),
        {"staff": "sam@platform.test"},
    )
    # The database no longer admits the session: support sees nothing of acme.
    assert admitted_conversations(acme, session) == set()
    # Ending it again changes nothing and records nothing.
    assert admin.post(end_url).status_code == 302
    assert len(audit_events(acme, "support.session_ended_by_tenant")) == 1


def test_support_access_page_when_nobody_ever_looked(acme: World, ada: User) -> None:
    page = text(browser(ada).get(reverse("app-support")))
    assert "Playbook support has never accessed your data" in page


# --------------------------------------------------------------------------- at the same time


def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    live_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each checks that another active owner remains, then changes the other's role; while
    the first change is not committed, the second must wait, then find no other owner."""
    world = build_world("acme")
    oscar = UserFactory.create(username="oscar@acme.test", tenant=world.tenant, first_name="Oscar")
    with tenant_context(world.tenant):
        Membership.objects.create(user=oscar, role=Membership.Role.OWNER)
    record = actions.record_audit_event

    def slow_record(*args: Any, **kwargs: Any) -> Any:
        event = record(*args, **kwargs)
        time.sleep(0.8)  # the first change's transaction stays open
        return event

    monkeypatch.setattr(actions, "record_audit_event", slow_record)
    results: dict[str, int] = {}

    def demote(name: str, actor: User, target: User, delay: float) -> None:
        time.sleep(delay)
        try:
            response = member_change(browser(actor), target, change="role", role="admin")
            results[name] = response.status_code
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=demote, args=("olivia", world.owner, oscar, 0.0)),
        threading.Thread(target=demote, args=("oscar", oscar, world.owner, 0.3)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # One change goes through; the other waits for it, then finds no other owner.
    assert sorted(results.values()) == [302, 400], results
    winner = world.owner if results["olivia"] == 302 else oscar
    with tenant_context(world.tenant):
        owners = list(Membership.objects.filter(role="owner").values_list("user_id", flat=True))
    assert owners == [winner.pk]
    forget_redis(world)
