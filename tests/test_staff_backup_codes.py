"""Staff backup codes: ten single-use codes, generated at /admin/enroll/ once TOTP is
confirmed, shown once, accepted at the admin's OTP step, stored as digests only; a new set
replaces the old one; every generation and use is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.test import Client
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.backup_codes import CODES_PER_SET
from accounts.models import User
from tenants.context import platform_context
from tests.factories import UserFactory
from tests.test_support_admin import PASSWORD, enroll_password_step, page, shown_secret, token_for

pytestmark = pytest.mark.django_db

ENROLL = "/admin/enroll/"
CODE = re.compile(r"<li>([a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4})</li>")
OnCommit = Callable[..., AbstractContextManager[Any]]


@pytest.fixture
def rosa() -> User:
    """Platform staff with a confirmed authenticator app."""
    user = UserFactory.create(username="rosa@platform.test", tenant=None, is_staff=True)
    with platform_context():  # second factors are platform rows
        TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    return user


def app_login(user: User) -> Client:
    """Rosa at the admin login with her authenticator app's current code."""
    client = Client()
    with platform_context():  # second factors are platform rows
        app = TOTPDevice.objects.get(user=user)
    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": user.username,
            "password": PASSWORD,
            "otp_device": app.persistent_id,
            "otp_token": token_for(app),
            "next": "/admin/",
        },
    )
    assert response.status_code == 302, page(response)
    return client


def code_login(user: User, code: str) -> tuple[Client, Any]:
    """The admin login, choosing the device "Backup codes" and typing `code`."""
    client = Client()
    with platform_context():  # second factors are platform rows
        device = StaticDevice.objects.get(user=user)
    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": user.username,
            "password": PASSWORD,
            "otp_device": device.persistent_id,
            "otp_token": code,
            "next": "/admin/",
        },
    )
    return client, response


def generate(client: Client) -> list[str]:
    response = client.post(ENROLL)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    codes = CODE.findall(page(response))
    assert len(codes) == CODES_PER_SET
    return codes


def test_after_confirming_totp_staff_generate_ten_codes_shown_once(rosa: User) -> None:
    sam = UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)
    client = Client()
    enroll_password_step(client, sam)
    key = shown_secret(client.get(ENROLL))
    with platform_context():  # second factors are platform rows
        app = TOTPDevice.objects.get(user=sam)
    done = client.post(ENROLL, {"token": token_for(app, key)})
    assert done["Location"] == ENROLL

    offer = page(client.get(ENROLL))
    assert "You have no backup codes yet." in offer
    assert f"Generate {CODES_PER_SET} backup codes" in offer

    codes = generate(client)
    assert len(set(codes)) == CODES_PER_SET
    # Shown once: the page afterwards only counts them.
    later = page(client.get(ENROLL))
    assert not CODE.search(later)
    assert f"You have <strong>{CODES_PER_SET}</strong> unused backup codes" in later
    # The database holds digests, none of them a code.
    with platform_context():  # second factors are platform rows
        stored = set(StaticToken.objects.filter(device__user=sam).values_list("token", flat=True))
    assert len(stored) == CODES_PER_SET
    assert not stored & {c for code in codes for c in (code, code.replace("-", ""))}


def test_a_backup_code_signs_in_at_the_otp_step_once(rosa: User) -> None:
    codes = generate(app_login(rosa))

    client, response = code_login(rosa, codes[0])
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    # Typed loosely (capitals, spaces for dashes) it still works.
    _, loose = code_login(rosa, codes[1].upper().replace("-", " "))
    assert loose.status_code == 302
    with platform_context():  # second factors are platform rows
        assert StaticToken.objects.filter(device__user=rosa).count() == CODES_PER_SET - 2

    _, again = code_login(rosa, codes[0])
    assert again.status_code == 200
    assert "Invalid token" in page(again)
    assert again.wsgi_request.user.is_anonymous


def test_what_the_database_stores_is_not_a_code(rosa: User) -> None:
    generate(app_login(rosa))
    with platform_context():  # second factors are platform rows
        digest = StaticToken.objects.filter(device__user=rosa).values_list("token", flat=True)[0]
    _, response = code_login(rosa, digest)
    assert response.status_code == 200
    assert "Invalid token" in page(response)


def test_a_new_set_replaces_the_old_one(rosa: User) -> None:
    client = app_login(rosa)
    old = generate(client)
    new = generate(client)
    assert not set(old) & set(new)
    with platform_context():  # second factors are platform rows
        assert StaticDevice.objects.filter(user=rosa).count() == 1
    with platform_context():  # second factors are platform rows
        assert StaticToken.objects.filter(device__user=rosa).count() == CODES_PER_SET

    _, refused = code_login(rosa, old[0])
    assert refused.status_code == 200
    # django-otp throttles a device after a failure; a new set starts afresh.
    generate(client)


def test_only_verified_staff_get_codes(rosa: User) -> None:
    # Signed in with the password only (no second factor): the page is the enrolment's
    # password step and a POST generates nothing.
    half = Client()
    half.force_login(rosa)
    assert not CODE.search(page(half.post(ENROLL)))
    assert "confirm your password" in page(half.get(ENROLL))
    with platform_context():  # second factors are platform rows
        assert not StaticToken.objects.exists()
    assert "confirm your password" in page(Client().get(ENROLL))


def test_generation_and_use_are_logged(
    rosa: User, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: OnCommit
) -> None:
    caplog.set_level(logging.INFO, logger="accounts.backup_codes")
    with django_capture_on_commit_callbacks(execute=True):
        codes = generate(app_login(rosa))
    with django_capture_on_commit_callbacks(execute=True):
        code_login(rosa, codes[0])
    with django_capture_on_commit_callbacks(execute=True):
        code_login(rosa, codes[0])
    messages = [r.getMessage() for r in caplog.records if r.name == "accounts.backup_codes"]
    assert messages == [
        f"staff rosa@platform.test (user {rosa.pk}) generated 10 backup codes, "
        "replacing 0 unused ones",
        f"staff rosa@platform.test (user {rosa.pk}) signed in to the support admin with a "
        "backup code; 9 left",
        f"staff rosa@platform.test (user {rosa.pk}) entered a backup code that was refused",
    ]
    assert not any(code in " ".join(messages) for code in codes)
