"""The support admin's login lockout: ADMIN_LOGIN_FAILURE_LIMIT failures (wrong password, app
code or backup code) lock that username out from that address, the right password included,
with the product's page saying until when; it ends by itself after the cool-off or when a
member of staff clears it at /admin/lockouts/. Tenant logins (OpenID Connect, the development
provider) are neither counted nor locked.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.conf import settings
from django.test import Client, override_settings
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.backup_codes import regenerate_backup_codes
from accounts.models import User
from tenants.context import platform_context
from tests.factories import UserFactory, build_world
from tests.test_oidc_login import Provider, give_identity, provider, sign_in
from tests.test_support_admin import PASSWORD, page, token_for, wrong_token_for

__all__ = ["provider"]  # the live provider fixture, shared with tests/test_oidc_login.py

OFFICE = "203.0.113.7"
HOME = "198.51.100.20"
LOCKED = "Too many failed sign-in attempts for this account from your network."


def staff_member(username: str) -> User:
    """Platform staff with a confirmed authenticator app."""
    user = UserFactory.create(username=username, tenant=None, is_staff=True)
    with platform_context():  # second factors are platform rows
        TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    return user


@pytest.fixture
def sam() -> User:
    return staff_member("sam@platform.test")


@pytest.fixture
def rosa() -> User:
    return staff_member("rosa@platform.test")


def app_of(user: User) -> TOTPDevice:
    with platform_context():  # second factors are platform rows
        return TOTPDevice.objects.get(user=user)


def attempt(
    client: Client,
    user: User,
    *,
    password: str = PASSWORD,
    device: Any = None,
    token: str | None = None,
) -> Any:
    """One try at the admin login: password, device and code (the app's current one)."""
    device = device or app_of(user)
    return client.post(
        "/admin/login/?next=/admin/",
        {
            "username": user.username,
            "password": password,
            "otp_device": device.persistent_id,
            "otp_token": token if token is not None else token_for(device),
            "next": "/admin/",
        },
    )


def lock_out(client: Client, user: User) -> Any:
    """Wrong passwords up to the limit; returns the answer to the last one."""
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        refused = attempt(client, user, password="not the password")
        assert refused.status_code == 200
        assert "Please enter the correct username and password" in page(refused)
    return attempt(client, user, password="not the password")


def assert_locked_page(response: Any) -> int:
    assert response.status_code == 429
    body = page(response)
    assert LOCKED in body
    assert "Sign-in is paused until" in body
    assert "Playbook support" in body  # the product's page, not axes' bare text
    assert "Account locked" not in body
    assert "no-store" in response["Cache-Control"]
    return int(response["Retry-After"])


def signed_in(client: Client) -> bool:
    return bool(client.get("/admin/").status_code == 200)


@pytest.mark.django_db
def test_wrong_passwords_lock_the_username_from_that_address_even_for_the_right_one(
    sam: User, rosa: User, caplog: pytest.LogCaptureFixture
) -> None:
    office = Client(REMOTE_ADDR=OFFICE)
    with caplog.at_level(logging.WARNING, logger="accounts.lockouts"):
        locked = lock_out(office, sam)
    cool_off = int(settings.AXES_COOLOFF_TIME.total_seconds())
    assert cool_off - 5 <= assert_locked_page(locked) <= cool_off
    assert any(
        "locked for username 'sam@platform.test' from 203.0.113.7" in r.getMessage()
        for r in caplog.records
    )

    # The right password and code now: refused the same way, and nobody is signed in.
    right = attempt(office, sam)
    assert_locked_page(right)
    assert not signed_in(office)
    assert right.wsgi_request.user.is_anonymous

    # Keyed on username + address: Sam from home, and Rosa from the office, get in.
    home = Client(REMOTE_ADDR=HOME)
    assert attempt(home, sam).status_code == 302
    assert signed_in(home)
    colleague = Client(REMOTE_ADDR=OFFICE)
    assert attempt(colleague, rosa).status_code == 302
    assert signed_in(colleague)


@pytest.mark.django_db
def test_a_successful_login_forgets_earlier_failures(sam: User) -> None:
    office = Client(REMOTE_ADDR=OFFICE)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt(office, sam, password="typo").status_code == 200
    assert attempt(office, sam).status_code == 302
    # A fresh count: one more typo later does not lock.
    later = Client(REMOTE_ADDR=OFFICE)
    assert attempt(later, sam, password="typo").status_code == 200


@pytest.mark.django_db
@override_settings(AXES_COOLOFF_TIME=timedelta(seconds=3))
def test_the_lockout_ends_by_itself_after_the_cool_off(sam: User) -> None:
    office = Client(REMOTE_ADDR=OFFICE)
    assert assert_locked_page(lock_out(office, sam)) <= 3
    # Tries during the lock are refused and do not extend it.
    assert attempt(office, sam).status_code == 429
    deadline = time.monotonic() + 15
    while (answer := attempt(office, sam)).status_code == 429:
        assert time.monotonic() < deadline, "still locked long after the cool-off"
        time.sleep(0.25)
    assert answer.status_code == 302
    assert signed_in(office)


@pytest.mark.django_db
def test_wrong_app_and_backup_codes_after_the_right_password_count_too(sam: User) -> None:
    with platform_context():  # second factors are platform rows
        regenerate_backup_codes(staff=sam)
        backup = StaticDevice.objects.get(user=sam)
    app = app_of(sam)
    office = Client(REMOTE_ADDR=OFFICE)
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        if n % 2:
            wrong = attempt(office, sam, device=backup, token="aaaa-bbbb-cccc-dddd")
        else:
            wrong = attempt(office, sam, device=app, token=wrong_token_for(app))
        assert wrong.status_code == 200
        assert not signed_in(office)
    locked = attempt(office, sam, device=backup, token="aaaa-bbbb-cccc-dddd")
    assert_locked_page(locked)
    # Now even the password and the app's right code are refused.
    assert_locked_page(attempt(office, sam))
    assert not signed_in(office)


@pytest.mark.django_db
def test_a_login_without_a_code_is_not_counted_as_a_guess(sam: User) -> None:
    office = Client(REMOTE_ADDR=OFFICE)
    for _ in range(settings.AXES_FAILURE_LIMIT + 1):
        asked = attempt(office, sam, token="")
        assert asked.status_code == 200  # the form asks for the code
    assert attempt(office, sam).status_code == 302


@pytest.mark.django_db
def test_staff_see_a_lockout_and_clear_it(
    sam: User, rosa: User, caplog: pytest.LogCaptureFixture
) -> None:
    office = Client(REMOTE_ADDR=OFFICE)
    assert_locked_page(lock_out(office, sam))

    desk = Client()
    assert attempt(desk, rosa).status_code == 302
    index = page(desk.get("/admin/"))
    assert 'href="/admin/lockouts/"' in index  # the header links to the list
    listing = desk.get("/admin/lockouts/")
    assert listing.status_code == 200
    rows = page(listing)
    assert "sam@platform.test" in rows and OFFICE in rows
    assert f"<td>{settings.AXES_FAILURE_LIMIT}</td>" in rows
    found = re.search(r'name="lockout" value="([^"]+)"', rows)
    assert found

    with caplog.at_level(logging.WARNING, logger="accounts.lockouts"):
        cleared = desk.post("/admin/lockouts/", {"lockout": found.group(1)}, follow=True)
    after = page(cleared)
    assert "Cleared the lockout of sam@platform.test from 203.0.113.7." in after
    assert "No login lockouts in force." in after
    assert any(
        "staff rosa@platform.test" in r.getMessage() and "'sam@platform.test'" in r.getMessage()
        for r in caplog.records
    )
    # Sam signs in from the office again at once.
    assert attempt(office, sam).status_code == 302
    assert signed_in(office)

    # Clearing it a second time changes nothing and says so.
    again = desk.post("/admin/lockouts/", {"lockout": found.group(1)}, follow=True)
    assert "That lockout had already ended." in page(again)


@pytest.mark.django_db
def test_only_verified_staff_open_the_lockouts_page(sam: User) -> None:
    acme = build_world("acme")
    anonymous = Client()
    assert anonymous.get("/admin/lockouts/").status_code == 302
    tenant_admin = Client()
    tenant_admin.force_login(acme.owner)
    assert tenant_admin.get("/admin/lockouts/").status_code == 302
    password_only = Client()  # staff, password checked but no second factor
    password_only.force_login(sam, backend="accounts.backends.AccountLookupBackend")
    assert password_only.get("/admin/lockouts/").status_code == 302
    assert password_only.post("/admin/lockouts/", {"lockout": "axes-x"}).status_code == 302


@pytest.mark.django_db
def test_failures_at_the_development_provider_do_not_lock_the_admin(sam: User) -> None:
    acme = build_world("acme")
    give_identity(sam, tenant_claim=str(acme.tenant.id), roles=["consultant"])
    office = Client(REMOTE_ADDR=OFFICE)
    for _ in range(settings.AXES_FAILURE_LIMIT + 1):
        wrong = office.post("/idp/login/", {"username": sam.username, "password": "nope"})
        assert wrong.status_code == 200
        assert "Unknown username or wrong password." in page(wrong)
    assert attempt(office, sam).status_code == 302


def test_admin_lockouts_leave_tenant_logins_alone(provider: Provider) -> None:
    acme = build_world("acme")
    connor = acme.consultant
    give_identity(connor, tenant_claim=str(acme.tenant.id), roles=["consultant"])
    # Someone fails at the support admin as Connor, from his own address (127.0.0.1).
    admin = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        last = admin.post("/admin/login/", {"username": connor.username, "password": "x"})
    assert last.status_code == 429

    # He still signs in to Playbook through the provider (its password page included).
    browser = requests.Session()
    assert sign_in(browser, provider, connor.username).status_code == 302
    assert browser.get(f"{provider.url}/api/v1/me").json()["role"] == "consultant"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.django_db
def test_with_its_redis_down_the_admin_login_is_briefly_unavailable_never_open(
    sam: User,
) -> None:
    guards = {**settings.CACHES[settings.GUARDS_CACHE]}
    guards["LOCATION"] = f"redis://127.0.0.1:{closed_port()}/0"
    with override_settings(CACHES={**settings.CACHES, settings.GUARDS_CACHE: guards}):
        office = Client(REMOTE_ADDR=OFFICE, raise_request_exception=False)
        answer = attempt(office, sam)
        assert answer.status_code == 503
        assert "briefly unavailable" in page(answer)
        assert "Traceback" not in page(answer)
    assert not signed_in(office)
