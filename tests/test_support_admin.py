"""The support admin: platform staff only, TOTP required, tenant data only through an open,
unexpired support session, and every look at a tenant's data is in that tenant's audit log.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.utils import ProgrammingError
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import SupportSession, User
from accounts.queries import find_user
from audit.actions import audit_operator, record_audit_event
from audit.models import AuditEvent
from conversations.models import Conversation
from tenants.context import TenantContextRefused, platform_context, tenant_context
from tests.factories import UserFactory, World, build_world

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"  # tests.factories.UserFactory's password
REASON = "Ticket 4711: the client cannot see her last conversation"
CONVERSATIONS = "/admin/conversations/conversation/"


@pytest.fixture
def acme() -> World:
    return build_world("acme", conversation_title="Acme onboarding")


@pytest.fixture
def globex() -> World:
    return build_world("globex", conversation_title="Globex pricing")


@pytest.fixture
def staff() -> User:
    return UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)


def token_for(device: TOTPDevice, key: bytes | None = None) -> str:
    code = totp(
        key if key is not None else device.bin_key,
        step=device.step,
        t0=device.t0,
        digits=device.digits,
        drift=device.drift,
    )
    return f"{code:0{device.digits}d}"


def wrong_token_for(device: TOTPDevice) -> str:
    return f"{(int(token_for(device)) + 1) % 10**device.digits:0{device.digits}d}"


def otp_login(user: User, device: TOTPDevice, token: str | None = None) -> tuple[Client, Any]:
    """Log in through the real admin login form: password, device and current TOTP code."""
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": user.username,
            "password": PASSWORD,
            "otp_device": device.persistent_id,
            "otp_token": token if token is not None else token_for(device),
            "next": "/admin/",
        },
    )
    return client, response


@pytest.fixture
def admin_client(staff: User) -> Client:
    with platform_context():  # second factors are platform rows
        device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client, response = otp_login(staff, device)
    assert response.status_code == 302, response.content
    assert response["Location"] == "/admin/"
    return client


def open_session(client: Client, world: World, reason: str = REASON, minutes: int = 30) -> str:
    response = client.post(
        "/admin/support/open/",
        {"tenant": str(world.tenant.id), "reason": reason, "minutes": minutes},
    )
    assert response.status_code == 302, response.content
    assert response["Location"] == "/admin/"
    return str(client.session["support_session"]["id"])


def titles(world: World) -> list[str]:
    return [c.title for c in world.conversations]


def page(response: Any) -> str:
    return str(response.content.decode())


def support_events(world: World, action: str | None = None) -> list[AuditEvent]:
    with tenant_context(world.tenant), audit_operator():
        events = AuditEvent.objects.filter(actor_type=AuditEvent.ActorType.SUPPORT)
        if action is not None:
            events = events.filter(action=action)
        return list(events.order_by("id"))


def raw_conversation_ids() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id::text FROM conversations_conversation")
        return {row[0] for row in cursor.fetchall()}


def assert_sees_no_conversations(client: Client, *worlds: World) -> None:
    response = client.get(CONVERSATIONS)
    assert response.status_code == 200
    body = page(response)
    assert "0 conversations" in body
    for world in worlds:
        for title in titles(world):
            assert title not in body


# --------------------------------------------------------------------------- who gets in


@pytest.mark.parametrize("superuser", [False, True], ids=["staff", "superuser"])
def test_a_password_session_without_otp_is_sent_to_the_otp_login(
    acme: World, superuser: bool
) -> None:
    user = UserFactory.create(
        username="root@platform.test", tenant=None, is_staff=True, is_superuser=superuser
    )
    with platform_context():  # second factors are platform rows
        TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = Client()
    client.force_login(user)  # Django session, but no second factor verified
    for url in ("/admin/", CONVERSATIONS, "/admin/support/open/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/?next="), url
    login_page = client.get("/admin/login/")
    assert 'name="otp_token"' in page(login_page)


def test_a_wrong_otp_code_does_not_open_the_admin(staff: User) -> None:
    with platform_context():  # second factors are platform rows
        device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client, response = otp_login(staff, device, token=wrong_token_for(device))
    assert response.status_code == 200
    assert "Invalid token" in page(response)
    assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_a_valid_otp_code_opens_the_admin(admin_client: Client) -> None:
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert "Playbook support" in page(response)
    assert "No support session: you see no tenant data." in page(response)


def test_tenant_users_never_get_in(acme: World) -> None:
    # A plain tenant user: the admin login form refuses a non-staff account.
    with platform_context():  # second factors are platform rows
        TOTPDevice.objects.create(user=acme.owner, name="phone", confirmed=True)
    with platform_context():  # second factors are platform rows
        device = TOTPDevice.objects.get(user=acme.owner)
    client, response = otp_login(acme.owner, device)
    assert response.status_code == 200
    assert client.get("/admin/")["Location"].startswith("/admin/login/")

    # Even a tenant user wrongly flagged is_staff, with a verified second factor, is not
    # platform staff: authenticated, but the admin stays closed.
    with tenant_context(acme.tenant):
        User.objects.filter(pk=acme.consultant.pk).update(is_staff=True, is_superuser=True)
        flagged = User.objects.get(pk=acme.consultant.pk)
    with platform_context():  # second factors are platform rows
        flagged_device = TOTPDevice.objects.create(user=flagged, name="phone", confirmed=True)
    client, _ = otp_login(flagged, flagged_device)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert client.get(CONVERSATIONS).status_code == 302


# --------------------------------------------------------------------------- enrolment


def enroll_password_step(client: Client, user: User) -> Any:
    return client.post("/admin/enroll/", {"username": user.username, "password": PASSWORD})


def shown_secret(response: Any) -> bytes:
    match = re.search(r"Key: <code>([A-Z2-7]+)</code>", page(response))
    assert match, "the enrolment page shows the key"
    secret = match.group(1)
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def test_enrolment_confirms_a_device_and_logs_in_verified(staff: User) -> None:
    client = Client()
    assert client.get("/admin/enroll/").status_code == 200
    step1 = enroll_password_step(client, staff)
    assert step1.status_code == 302
    assert step1["Location"] == "/admin/enroll/"

    scan = client.get("/admin/enroll/")
    assert scan.status_code == 200
    assert "<svg" in page(scan)
    with platform_context():  # second factors are platform rows
        device = TOTPDevice.objects.get(user=staff)
    assert not device.confirmed
    key = shown_secret(scan)
    assert key == device.bin_key
    # Reloading the page keeps the same device (the app already scanned it).
    assert shown_secret(client.get("/admin/enroll/")) == key

    # The code an authenticator app computes from the key shown on the page.
    done = client.post("/admin/enroll/", {"token": token_for(device, key)})
    assert done.status_code == 302
    assert done["Location"] == "/admin/enroll/"  # next: backup codes (test_staff_backup_codes)
    with platform_context():  # second factors are platform rows
        device.refresh_from_db()
    assert device.confirmed
    with platform_context():  # second factors are platform rows
        assert TOTPDevice.objects.filter(user=staff).count() == 1
    assert client.get("/admin/").status_code == 200

    # Enrolled: the enrolment page no longer hands out a device; the OTP login is the way.
    again = enroll_password_step(Client(), staff)
    assert again.status_code == 302
    assert again["Location"] == "/admin/login/"
    with platform_context():  # second factors are platform rows
        assert TOTPDevice.objects.filter(user=staff).count() == 1


def test_enrolment_with_a_wrong_code_confirms_nothing(staff: User) -> None:
    client = Client()
    enroll_password_step(client, staff)
    client.get("/admin/enroll/")
    with platform_context():  # second factors are platform rows
        device = TOTPDevice.objects.get(user=staff)
    response = client.post("/admin/enroll/", {"token": wrong_token_for(device)})
    assert response.status_code == 200
    assert "That code is not valid" in page(response)
    with platform_context():  # second factors are platform rows
        device.refresh_from_db()
    assert not device.confirmed
    assert client.get("/admin/").status_code == 302


def test_enrolment_refuses_tenant_users_and_wrong_passwords(acme: World, staff: User) -> None:
    client = Client()
    refused = enroll_password_step(client, acme.owner)
    assert refused.status_code == 200
    assert "Only platform staff use the support admin." in page(refused)
    assert "otp_enroll_user" not in client.session
    # Still on the password step: no key shown, no device created.
    assert "Key:" not in page(client.get("/admin/enroll/"))
    with platform_context():  # second factors are platform rows
        assert not TOTPDevice.objects.filter(user=acme.owner).exists()

    bad = client.post("/admin/enroll/", {"username": staff.username, "password": "nope"})
    assert bad.status_code == 200
    assert "otp_enroll_user" not in client.session
    with platform_context():  # second factors are platform rows
        assert not TOTPDevice.objects.exists()


# --------------------------------------------------------------------------- support sessions


def test_without_a_support_session_staff_see_no_tenant_data(
    admin_client: Client, acme: World, globex: World
) -> None:
    assert_sees_no_conversations(admin_client, acme, globex)
    for url in (
        "/admin/conversations/message/",
        "/admin/accounts/membership/",
        "/admin/audit/auditevent/",
        "/admin/accounts/apikey/",
    ):
        body = page(admin_client.get(url))
        assert re.search(r"\b0 [a-z ]+\b", body), url
        assert "Hello from acme" not in body and "Hello from globex" not in body
    # An object's own URL does not show it either.
    detail = admin_client.get(f"{CONVERSATIONS}{acme.conversations[0].id}/change/", follow=True)
    assert acme.conversations[0].title not in page(detail)
    # The same situation in SQL: no tenant setting, no support session, no rows.
    assert raw_conversation_ids() == set()
    # Nothing was visible, so nothing lands in any tenant's audit log.
    assert support_events(acme) == support_events(globex) == []


def test_a_support_session_needs_a_real_reason(admin_client: Client, acme: World) -> None:
    response = admin_client.post(
        "/admin/support/open/", {"tenant": str(acme.tenant.id), "reason": "  help  ", "minutes": 30}
    )
    assert response.status_code == 200
    assert "errorlist" in page(response)
    assert "support_session" not in admin_client.session
    with tenant_context(acme.tenant):
        assert not SupportSession.objects.exists()
    assert support_events(acme) == []
    assert_sees_no_conversations(admin_client, acme)


def test_a_support_session_shows_one_tenant_and_every_look_is_audited(
    admin_client: Client, staff: User, acme: World, globex: World
) -> None:
    session_id = open_session(admin_client, acme)
    banner = page(admin_client.get("/admin/"))
    assert "Support session:</strong> Acme" in banner

    listing = admin_client.get(CONVERSATIONS)
    body = page(listing)
    assert "2 conversations" in body
    for title in titles(acme):
        assert title in body
    for title in titles(globex):
        assert title not in body

    mine = acme.conversations[0]
    detail = admin_client.get(f"{CONVERSATIONS}{mine.id}/change/")
    assert detail.status_code == 200
    assert mine.title in page(detail)

    theirs = globex.conversations[0]
    refused = admin_client.get(f"{CONVERSATIONS}{theirs.id}/change/")
    assert refused.status_code == 302  # Django admin: "doesn't exist", back to the index
    followed = page(admin_client.get(refused["Location"]))
    assert "doesn\u2019t exist" in followed
    assert theirs.title not in followed
    messages = page(admin_client.get("/admin/conversations/message/"))
    assert "2 messages" in messages

    opened = support_events(acme, "support.session_opened")
    assert len(opened) == 1
    assert opened[0].actor_id == str(staff.pk)
    assert opened[0].resource_id == session_id
    assert opened[0].context["reason"] == REASON

    viewed = support_events(acme, "support.viewed")
    assert {(e.resource_type, e.resource_id, e.context["view"]) for e in viewed} >= {
        ("conversations.conversation", "", "list"),
        ("conversations.conversation", str(mine.id), "detail"),
        ("conversations.message", "", "list"),
    }
    for event in viewed:
        assert event.actor_id == str(staff.pk)
        assert event.context["support_session"] == session_id
        assert event.context["support_reason"] == REASON
    # The other tenant's log records nothing of this session.
    assert support_events(globex) == []


def test_the_database_ends_access_when_the_session_expires(
    admin_client: Client, acme: World
) -> None:
    session_id = open_session(admin_client, acme)
    assert "2 conversations" in page(admin_client.get(CONVERSATIONS))
    with tenant_context(acme.tenant):
        SupportSession.objects.filter(id=session_id).update(
            expires_at=timezone.now() - timedelta(hours=1)
        )
    # The staff member's browser still carries the session; the database no longer admits it.
    assert "support_session" in admin_client.session
    assert_sees_no_conversations(admin_client, acme)
    detail = admin_client.get(f"{CONVERSATIONS}{acme.conversations[0].id}/change/", follow=True)
    assert acme.conversations[0].title not in page(detail)
    # Nothing was seen after expiry, so nothing more was recorded.
    assert [e.context["view"] for e in support_events(acme, "support.viewed")] == ["list"]


def test_ending_the_session_ends_access(admin_client: Client, staff: User, acme: World) -> None:
    session_id = open_session(admin_client, acme)
    assert "2 conversations" in page(admin_client.get(CONVERSATIONS))

    ended = admin_client.post("/admin/support/end/")
    assert ended.status_code == 302
    assert "support_session" not in admin_client.session
    assert_sees_no_conversations(admin_client, acme)
    assert "No support session" in page(admin_client.get("/admin/"))

    with tenant_context(acme.tenant):
        session = SupportSession.objects.get(id=session_id)
    assert session.ended_at is not None
    assert not session.is_active
    ended_events = support_events(acme, "support.session_ended")
    assert [(e.actor_id, e.resource_id) for e in ended_events] == [(str(staff.pk), session_id)]

    # The ended session cannot be revived by putting its id back into the browser session.
    stored = admin_client.session
    stored["support_session"] = {
        "id": session_id,
        "tenant_id": str(acme.tenant.id),
        "tenant_name": acme.tenant.name,
        "expires_at": session.expires_at.isoformat(),
    }
    stored.save()
    assert_sees_no_conversations(admin_client, acme)


def test_a_new_session_can_be_opened_while_one_is_open(
    admin_client: Client, acme: World, globex: World
) -> None:
    first = open_session(admin_client, acme)
    second = open_session(admin_client, globex)
    # The replaced session ends now rather than staying valid until it expires.
    with tenant_context(acme.tenant):
        assert SupportSession.objects.get(id=first).ended_at is not None
    assert [e.resource_id for e in support_events(acme, "support.session_ended")] == [first]
    body = page(admin_client.get(CONVERSATIONS))
    for title in titles(globex):
        assert title in body
    for title in titles(acme):
        assert title not in body
    assert [e.resource_id for e in support_events(globex, "support.session_opened")] == [second]


# --------------------------------------------------------------------------- tenant admins see them


def api_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_tenant_admins_see_the_support_sessions_on_their_tenant(
    admin_client: Client, acme: World, globex: World
) -> None:
    session_id = open_session(admin_client, acme)

    listed = api_client(acme.owner).get("/api/v1/support-sessions/")
    assert listed.status_code == 200
    rows = listed.json()["results"]
    assert [(r["id"], r["staff"], r["reason"], r["is_active"]) for r in rows] == [
        (session_id, "sam@platform.test", REASON, True)
    ]
    detail = api_client(acme.owner).get(f"/api/v1/support-sessions/{session_id}/")
    assert detail.status_code == 200
    assert detail.json()["reason"] == REASON

    for user in (acme.consultant, acme.client):
        assert api_client(user).get("/api/v1/support-sessions/").status_code == 403

    other = api_client(globex.owner)
    assert other.get("/api/v1/support-sessions/").json()["results"] == []
    missing = other.get(f"/api/v1/support-sessions/{session_id}/")
    assert missing.status_code == 404
    assert missing.json() == {"code": "not_found", "message": "Not found."}


# --------------------------------------------------------------------------- the database itself


def make_session(world: World, staff: User, **fields: Any) -> SupportSession:
    with tenant_context(world.tenant):
        session: SupportSession = SupportSession.objects.create(
            staff=staff, reason=REASON, **fields
        )
        return session


def insert_conversation_row(world: World) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO conversations_conversation "
            "(id, tenant_id, client_id, title, status, created_at, updated_at) "
            "VALUES (gen_random_uuid(), %s, %s, 'support write', 'open', now(), now())",
            [world.tenant.id, world.client.id],
        )


def test_a_support_session_admits_only_its_own_tenants_rows(
    staff: User, acme: World, globex: World
) -> None:
    session = make_session(acme, staff)
    with tenant_context(acme.tenant, support_session=session.id):
        assert raw_conversation_ids() == acme.conversation_ids
        assert {str(c.id) for c in Conversation.objects.all()} == acme.conversation_ids

    # Claiming another tenant with A's session, or a made-up session: the database does
    # not let the context in at all.
    with (
        pytest.raises(TenantContextRefused),
        tenant_context(globex.tenant, support_session=session.id),
    ):
        pass
    for made_up in (uuid.uuid4(), uuid.UUID(int=0)):
        with (
            pytest.raises(TenantContextRefused),
            tenant_context(acme.tenant, support_session=made_up),
        ):
            pass


@pytest.mark.parametrize("ended", [True, False], ids=["ended", "expired"])
def test_an_ended_or_expired_session_admits_nothing(staff: User, acme: World, ended: bool) -> None:
    past = timezone.now() - timedelta(hours=1)
    session = make_session(acme, staff, **({"ended_at": past} if ended else {"expires_at": past}))
    with (
        pytest.raises(TenantContextRefused),
        tenant_context(acme.tenant, support_session=session.id),
    ):
        pass
    # Nor does a session that the database ended after the context was entered (the bound
    # context is this transaction's only).
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.support_session', %s, true)", [str(session.id)])
        assert raw_conversation_ids() == set()
        with pytest.raises(ProgrammingError, match="row-level security"):
            insert_conversation_row(acme)


def test_writes_for_another_tenant_are_refused_in_a_support_session(
    staff: User, acme: World, globex: World
) -> None:
    session = make_session(acme, staff)
    with tenant_context(acme.tenant, support_session=session.id):
        insert_conversation_row(acme)  # its own tenant: admitted
        record_audit_event("test.write", actor=staff)  # lands in the session's tenant
        with pytest.raises(ProgrammingError, match="row-level security"):
            insert_conversation_row(globex)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE conversations_conversation SET title = 'hijacked' WHERE id = ANY(%s)",
                [[c.id for c in globex.conversations]],
            )
            assert cursor.rowcount == 0
            with pytest.raises(ProgrammingError, match="row-level security"), transaction.atomic():
                cursor.execute(
                    "UPDATE conversations_conversation SET tenant_id = %s WHERE id = %s",
                    [globex.tenant.id, acme.conversations[0].id],
                )
    with tenant_context(globex.tenant), audit_operator():
        assert sorted(Conversation.objects.values_list("title", flat=True)) == sorted(
            titles(globex)
        )
        assert not AuditEvent.objects.filter(action="test.write").exists()
    with tenant_context(acme.tenant), audit_operator():
        assert Conversation.objects.filter(title="support write").count() == 1
        assert AuditEvent.objects.filter(action="test.write").count() == 1


def test_create_staff_makes_a_platform_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAFF_PASSWORD", "a long enough passphrase 42")
    out = StringIO()
    call_command("create_staff", "--username", "ops@platform.test", stdout=out)
    assert "Created staff account ops@platform.test" in out.getvalue()
    made = find_user("username", "ops@platform.test")
    assert made is not None and made.is_staff and made.tenant_id is None
    assert made.check_password("a long enough passphrase 42")
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_staff", "--username", "ops@platform.test", stdout=StringIO())
