"""Request rates: per credential on the API (an API key, a person), per client address on the
anonymous pages (login, invitation, the development provider) and on API requests without a
credential. Over the rate: 429 with Retry-After, the API's JSON error or the product's page.
Redis unreachable: requests go through (fail open) and a warning is logged.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings

from accounts.guard_store import guard_key, guard_redis
from tests.factories import World, build_world
from tests.test_api_access import issue

pytestmark = pytest.mark.django_db

CONVERSATIONS = "/api/v1/conversations/"


def rates(**changed: str) -> Any:
    return override_settings(THROTTLE_RATES={**settings.THROTTLE_RATES, **changed})


@pytest.fixture
def acme() -> World:
    return build_world("acme")


def bearer(key: str, **defaults: Any) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}", **defaults)


def assert_rate_limited_json(response: Any, period: int = 60) -> int:
    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= period
    assert json.loads(response.content) == {
        "code": "rate_limited",
        "message": f"Too many requests; try again in {retry_after} s.",
    }
    return retry_after


def assert_rate_limited_page(response: Any, period: int = 60) -> int:
    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= period
    body = response.content.decode()
    assert response["Content-Type"].startswith("text/html")
    assert "<h1>Too many requests</h1>" in body
    assert f"Too many requests; try again in {retry_after} s." in body
    return retry_after


def test_an_api_key_over_its_rate_gets_a_429_and_another_key_does_not(acme: World) -> None:
    first, first_secret = issue(acme, scope="read", name="Busy partner")
    _, second_secret = issue(acme, scope="read", name="Quiet partner")
    busy, quiet = bearer(first_secret), bearer(second_secret)
    with rates(api_credential="3/min"):
        for _ in range(3):
            assert busy.get(CONVERSATIONS).status_code == 200
        assert_rate_limited_json(busy.get(CONVERSATIONS))
        assert_rate_limited_json(busy.get("/api/v1/me"))  # one count across endpoints
        assert quiet.get(CONVERSATIONS).status_code == 200
    # Counted by the key's id, never by its secret (which is not in Redis at all).
    keys = [k.decode() for k in guard_redis().scan_iter(guard_key("throttle:*"))]
    assert any(f"api_key:{first.id}" in k for k in keys)
    assert not any(first_secret in k or first_secret.split(".")[1] in k for k in keys)


def test_a_person_is_counted_across_her_sessions(acme: World) -> None:
    laptop, phone = Client(), Client()
    laptop.force_login(acme.consultant)
    phone.force_login(acme.consultant)
    colleague = Client()
    colleague.force_login(acme.owner)
    with rates(api_credential="2/min"):
        assert laptop.get(CONVERSATIONS).status_code == 200
        assert phone.get(CONVERSATIONS).status_code == 200
        assert_rate_limited_json(laptop.get(CONVERSATIONS))
        assert colleague.get(CONVERSATIONS).status_code == 200


def test_the_rate_applies_whatever_the_address(acme: World) -> None:
    _, secret = issue(acme, scope="read")
    with rates(api_credential="2/min"):
        assert bearer(secret, REMOTE_ADDR="198.51.100.1").get(CONVERSATIONS).status_code == 200
        assert bearer(secret, REMOTE_ADDR="198.51.100.2").get(CONVERSATIONS).status_code == 200
        assert_rate_limited_json(bearer(secret, REMOTE_ADDR="198.51.100.3").get(CONVERSATIONS))


def test_api_requests_without_a_credential_are_limited_per_address(acme: World) -> None:
    _, secret = issue(acme, scope="read")
    here = Client()
    with rates(api_anonymous="2/min"):
        assert here.get(CONVERSATIONS).status_code == 401
        refused = bearer("pbk_not_a_key", REMOTE_ADDR="127.0.0.1").get(CONVERSATIONS)
        assert refused.status_code == 401  # a refused credential counts as none
        assert_rate_limited_json(here.get(CONVERSATIONS))
        # A valid key from the same address is counted as itself, not as the address.
        assert bearer(secret).get(CONVERSATIONS).status_code == 200
        assert Client(REMOTE_ADDR="198.51.100.9").get(CONVERSATIONS).status_code == 401


@pytest.mark.parametrize(
    ("scope", "path"),
    [
        ("login", "/login/"),
        ("login", "/admin/login/"),
        ("invite", "/invite/no-such-invitation/"),
        ("dev_idp", "/idp/login/"),
    ],
)
def test_anonymous_pages_are_limited_per_address(scope: str, path: str) -> None:
    here = Client()
    with rates(**{scope: "2/min"}):
        first = here.get(path)
        assert first.status_code in (200, 404)
        assert here.get(path).status_code == first.status_code
        assert_rate_limited_page(here.get(path))
        # Another address is counted on its own.
        assert Client(REMOTE_ADDR="198.51.100.9").get(path).status_code == first.status_code


def test_each_anonymous_scope_has_its_own_count() -> None:
    here = Client()
    with rates(login="1/min", invite="1/min"):
        assert here.get("/login/").status_code == 200
        assert here.get("/invite/no-such-invitation/").status_code == 404
        assert here.get("/login/").status_code == 429
        assert here.get("/invite/no-such-invitation/").status_code == 429
        assert here.get("/").status_code == 200  # the front page is not counted


def test_the_address_comes_from_trusted_proxies_only() -> None:
    with rates(login="2/min"):
        # No proxy trusted: X-Forwarded-For is the client's own writing, and ignored.
        direct = [
            Client(REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR=f"10.9.9.{n}") for n in range(3)
        ]
        assert [c.get("/login/").status_code for c in direct] == [200, 200, 429]

        with override_settings(TRUSTED_PROXY_COUNT=1):
            # Behind one load balancer (REMOTE_ADDR): the client is the last address it added.
            alice = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.1")
            assert [alice.get("/login/").status_code for _ in range(3)] == [200, 200, 429]
            # Whatever she writes to the left of it changes nothing.
            spoofed = Client(
                REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.50, 198.51.100.1"
            )
            assert spoofed.get("/login/").status_code == 429
            bob = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.2")
            assert bob.get("/login/").status_code == 200


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    with rates(login="2/min"):
        addresses = ["2001:db8:1:2::1", "2001:db8:1:2::ffff", "2001:db8:1:2:abcd::9"]
        codes = [Client(REMOTE_ADDR=a).get("/login/").status_code for a in addresses]
        assert codes == [200, 200, 429]
        assert Client(REMOTE_ADDR="2001:db8:1:3::1").get("/login/").status_code == 200


@pytest.fixture
def guards_redis_down() -> Iterator[None]:
    """The `guards` cache pointed at a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    guards = {**settings.CACHES[settings.GUARDS_CACHE], "LOCATION": f"redis://127.0.0.1:{port}/0"}
    with override_settings(CACHES={**settings.CACHES, settings.GUARDS_CACHE: guards}):
        yield


@pytest.mark.usefixtures("guards_redis_down")
def test_with_its_redis_down_requests_go_through_and_a_warning_is_logged(
    acme: World, caplog: pytest.LogCaptureFixture
) -> None:
    _, secret = issue(acme, scope="read")
    session = Client()
    session.force_login(acme.consultant)
    with rates(api_credential="1/min", api_anonymous="1/min", login="1/min", invite="1/min"):
        with caplog.at_level(logging.WARNING, logger="config.throttling"):
            for _ in range(3):
                assert bearer(secret).get(CONVERSATIONS).status_code == 200
                assert session.get(CONVERSATIONS).status_code == 200
                assert Client().get(CONVERSATIONS).status_code == 401
                assert Client().get("/login/").status_code == 200
                assert Client().get("/invite/no-such-invitation/").status_code == 404
        warnings = [r.getMessage() for r in caplog.records if r.name == "config.throttling"]
        assert any("request rate (api_credential) not checked" in w for w in warnings)
        assert any("request rate (login) not checked" in w for w in warnings)
        assert all("ConnectionError" in w for w in warnings)
