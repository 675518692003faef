"""Sessions live in Redis, never in the database: whoever can run SQL as the app's role finds
no session to replay, staff sessions carrying a support session included.
"""

from __future__ import annotations

import psycopg
import pytest
import redis
from django.conf import settings
from django.contrib.sessions.backends.cache import KEY_PREFIX
from django.core.cache import caches
from django.db import ProgrammingError, connection, transaction
from django.test import Client, override_settings

from accounts import oidc
from accounts.models import User
from tests.factories import World, build_world
from tests.test_support_admin import admin_client, open_session, otp_login, staff  # noqa: F401
from tests.web import browser

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme() -> World:
    return build_world("acme")


def stored_session(client: Client) -> dict[str, object] | None:
    """The session of `client`'s cookie, read straight from the sessions' Redis."""
    cookie = client.cookies.get(settings.SESSION_COOKIE_NAME)
    if cookie is None or not cookie.value:
        return None
    return caches["sessions"].get(KEY_PREFIX + cookie.value)


def redis_key(session_key: str) -> str:
    return caches["sessions"].make_key(KEY_PREFIX + session_key)


def session_rows_in_the_database() -> int:
    """Rows in django_session, counted by the administrator: the app's own role may not even
    read the table (tenants migration 0006)."""
    with (
        pytest.raises(ProgrammingError, match="permission denied"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT count(*) FROM django_session")
    admin = psycopg.conninfo.make_conninfo(
        settings.DATABASE_ADMIN_URL, dbname=connection.settings_dict["NAME"]
    )
    with psycopg.connect(admin) as conn:
        row = conn.execute("SELECT count(*) FROM django_session").fetchone()
    return int(row[0]) if row else 0


def test_a_session_is_kept_in_redis_and_carries_the_person_across_requests(acme: World) -> None:
    client = browser(acme.client)
    for _ in range(2):
        me = client.get("/api/v1/me")
        assert me.status_code == 200
        assert me.json()["id"] == str(acme.client.pk)
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    raw = redis.Redis.from_url(settings.SESSION_REDIS_URL)
    key = redis_key(session_key)
    assert key.startswith("playbook-session:")  # never mixed with the cache's `playbook:` keys
    assert raw.exists(key)
    assert 0 < raw.ttl(key) <= settings.SESSION_COOKIE_AGE
    assert stored_session(client)["_auth_user_id"] == str(acme.client.pk)  # type: ignore[index]


def test_the_database_holds_no_session_after_logins(
    acme: World,
    staff: User,  # noqa: F811
    admin_client: Client,  # noqa: F811
) -> None:
    # A member's session, and a staff session verified by TOTP carrying a support session.
    member = browser(acme.owner)
    assert member.get("/api/v1/me").status_code == 200
    support_id = open_session(admin_client, acme)
    assert stored_session(admin_client)["support_session"]["id"] == support_id  # type: ignore[index]
    assert admin_client.get("/admin/").status_code == 200

    assert session_rows_in_the_database() == 0


def test_logout_removes_the_session_from_redis(acme: World) -> None:
    client = browser(acme.client)
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert caches["sessions"].has_key(KEY_PREFIX + session_key)
    with override_settings(OIDC_ISSUER="http://127.0.0.1:9/idp"):  # no provider to tell
        oidc.reset_caches()
        bye = client.post("/logout/")
    oidc.reset_caches()
    assert bye.status_code == 302
    assert not caches["sessions"].has_key(KEY_PREFIX + session_key)
    assert client.get("/api/v1/me").status_code in (401, 403)


def test_the_support_admin_logout_removes_the_staff_session_from_redis(
    acme: World,
    admin_client: Client,  # noqa: F811
) -> None:
    open_session(admin_client, acme)
    session_key = admin_client.cookies[settings.SESSION_COOKIE_NAME].value
    assert caches["sessions"].has_key(KEY_PREFIX + session_key)
    assert admin_client.post("/admin/logout/").status_code == 302
    assert not caches["sessions"].has_key(KEY_PREFIX + session_key)
    assert admin_client.get("/admin/").status_code == 302


def test_a_session_redis_out_of_reach_is_a_503_not_a_signed_out_person(acme: World) -> None:
    client = browser(acme.client)
    client.raise_request_exception = False
    sessions_down = {
        **settings.CACHES,
        "sessions": {**settings.CACHES["sessions"], "LOCATION": "redis://127.0.0.1:9/0"},
    }
    with override_settings(CACHES=sessions_down):
        page = client.get("/chat/")
        api = client.get("/api/v1/me")
    assert page.status_code == 503
    assert "Playbook is briefly unavailable" in page.content.decode()
    assert api.status_code == 503
    assert api.json()["code"] == "service_unavailable"
    # Back: still signed in.
    assert client.get("/api/v1/me").status_code == 200
