"""A KMS or Vault that is unreachable, slow or throttling fails the one call that needed a
credential -- quickly, clearly, with nothing half-written -- while the rest of the product
keeps working.

Real parts only: a closed port (nothing listens), a local socket server that accepts and
never answers, moto's AWS KMS in server mode (tests/test_vault.py), and a local stand-in
that answers as AWS KMS does when it throttles (checking the request shape the real API
requires). Each bound is measured against the configured timeouts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import override_settings

from agents.models import AgentRun, TenantEntitlement
from config.processes import free_port
from tenants.context import tenant_context
from tenants.models import Credential, Tenant, TenantDataKey
from tenants.vault.backends import CredentialStoreUnavailable, reset_backends
from tenants.vault.service import use_credential
from tests.factories import World, build_world, set_plan
from tests.test_agents import (
    ask,
    eager,  # noqa: F401  (fixture)
    get_run,
    plan_defaults,  # noqa: F401  (fixture)
    stack,  # noqa: F401  (fixture: committed data, eager Celery, plan defaults)
)
from tests.test_vault import SECRET, kms_key, make, moto_kms  # noqa: F401  (fixture)
from tests.web import browser, forget_redis, text

UNAVAILABLE = {
    "code": "credential_store_unavailable",
    "message": CredentialStoreUnavailable.user_message,
}
TIMEOUTS = {
    "VAULT_CONNECT_TIMEOUT_SECONDS": 0.5,
    "VAULT_READ_TIMEOUT_SECONDS": 0.5,
    "VAULT_MAX_ATTEMPTS": 2,
}


@pytest.fixture(autouse=True)
def fresh_backends() -> Iterator[None]:
    reset_backends()
    yield
    reset_backends()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 signs every request; the stand-ins do not check the signature's key.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def acme(db: None) -> Iterator[World]:
    world = build_world("acme")
    yield world
    forget_redis(world)


class SilentServer:
    """Accepts TCP connections and never answers: a KMS or Vault that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def vault(addr: str) -> dict[str, Any]:
    return {
        "VAULT_BACKEND": "vault_transit",
        "VAULT_ADDR": addr,
        "VAULT_TOKEN": "s.test-token",
        "VAULT_TRANSIT_KEY": "playbook",
        **TIMEOUTS,
    }


def kms(endpoint: str, key_id: str = "alias/playbook") -> dict[str, Any]:
    return {
        "VAULT_BACKEND": "aws_kms",
        "VAULT_AWS_ENDPOINT_URL": endpoint,
        "VAULT_AWS_REGION": "eu-west-1",
        "VAULT_AWS_KMS_KEY_ID": key_id,
        **TIMEOUTS,
    }


def nothing_written(world: World) -> None:
    with tenant_context(world.tenant):
        assert not Credential.objects.exists()
        assert not TenantDataKey.objects.exists()


def add_through_the_api(world: World) -> tuple[Any, float]:
    owner = browser(world.owner)
    started = time.monotonic()
    response = owner.post(
        "/api/v1/credentials/",
        {"name": "openai", "kind": "openai", "secret": SECRET},
        content_type="application/json",
    )
    return response, time.monotonic() - started


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.content
    assert response.json() == UNAVAILABLE
    assert response["Retry-After"] == "30"
    assert SECRET not in response.content.decode()


def test_an_unreachable_vault_fails_the_call_that_needed_it_and_nothing_else(
    acme: World,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    with override_settings(**vault(closed)):
        # The API: a 503 with the stable code and Retry-After; nothing half-written.
        response, _ = add_through_the_api(acme)
        assert_unavailable(response)
        nothing_written(acme)

        # The settings page: the form again with the error, nothing saved, the form kept.
        owner = browser(acme.owner)
        page = owner.post(
            "/app/credentials/", {"name": "openai", "kind": "openai", "secret": SECRET}
        )
        assert page.status_code == 503
        assert page["Retry-After"] == "30"
        body = text(page)
        message = CredentialStoreUnavailable.user_message
        assert f'<p class="error" role="alert">{message}</p>' in body
        assert 'value="openai"' in body  # what was typed, except the secret
        assert SECRET not in body
        nothing_written(acme)

        # Everything that needs no credential keeps working.
        assert owner.get("/app/credentials/").status_code == 200
        assert owner.get("/app/").status_code == 200
        assert owner.get("/app/tools/").status_code == 200
        assert owner.get("/api/v1/conversations/").status_code == 200
        assert browser(acme.client).get("/chat/").status_code == 200


def test_a_vault_that_never_answers_is_given_up_on_after_the_read_timeout(
    acme: World, silent: SilentServer
) -> None:
    with override_settings(**vault(f"http://127.0.0.1:{silent.port}")):
        response, elapsed = add_through_the_api(acme)
    assert_unavailable(response)
    assert len(silent.accepted) == 1  # it connected, then waited for an answer
    assert 0.5 <= elapsed < 3, elapsed  # VAULT_READ_TIMEOUT_SECONDS, not hvac's 30 s
    nothing_written(acme)


def test_a_vault_that_speaks_no_tls_is_a_clear_failure(acme: World) -> None:
    plain = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        with (
            override_settings(**vault(f"https://127.0.0.1:{plain.server_port}")),
            tenant_context(acme.tenant),
            pytest.raises(CredentialStoreUnavailable) as e,
        ):
            make(acme)
    finally:
        plain.shutdown()
        plain.server_close()
    assert str(e.value) == "Vault failed the TLS handshake (SSLError)."
    nothing_written(acme)


# --------------------------------------------------------------------------- AWS KMS


def test_aws_kms_unreachable_or_silent_fails_within_the_bound_and_keeps_the_credential(
    moto_kms: str,  # noqa: F811
    acme: World,
    silent: SilentServer,
) -> None:
    key = kms_key(moto_kms)
    with override_settings(**kms(moto_kms, key)):
        reset_backends()
        credential = make(acme)  # wrapped by (moto's) KMS while it is up
    with tenant_context(acme.tenant):
        before = bytes(Credential.objects.get(id=credential.id).ciphertext)

    # KMS unreachable: using the credential and rotating it both fail clearly.
    with override_settings(**kms(f"http://127.0.0.1:{free_port()}", key)):
        reset_backends()
        with (
            tenant_context(acme.tenant),
            pytest.raises(CredentialStoreUnavailable, match="AWS KMS could not be reached"),
            use_credential("openai"),
        ):
            pytest.fail("the secret was decrypted without the KMS")
        rotated = browser(acme.owner).post(
            f"/api/v1/credentials/{credential.id}/rotate/",
            {"secret": "sk-new-secret-11111111111111111"},
            content_type="application/json",
        )
        assert_unavailable(rotated)

    # KMS that never answers: VAULT_MAX_ATTEMPTS tries, each bounded by the read timeout.
    with override_settings(**kms(f"http://127.0.0.1:{silent.port}", key)):
        reset_backends()
        started = time.monotonic()
        with (
            tenant_context(acme.tenant),
            pytest.raises(CredentialStoreUnavailable, match="did not answer in time"),
            use_credential("openai"),
        ):
            pytest.fail("the secret was decrypted without the KMS")
        elapsed = time.monotonic() - started
    assert len(silent.accepted) == 2  # the first try and one retry, no more
    assert 1.0 <= elapsed < 5, elapsed  # botocore's defaults: 60 s reads, several tries

    # The credential is as it was; with KMS back it works again.
    with tenant_context(acme.tenant):
        assert bytes(Credential.objects.get(id=credential.id).ciphertext) == before
        assert Credential.objects.get(id=credential.id).rotated_at is None
    with override_settings(**kms(moto_kms, key)):
        reset_backends()
        with tenant_context(acme.tenant), use_credential("openai") as secret:
            assert secret == SECRET


@pytest.fixture
def throttling_kms() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Answers every KMS call the way AWS does when it throttles, after checking that the
    request is a KMS call (JSON 1.1 protocol, X-Amz-Target, a signed Authorization)."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            seen.append({"target": self.headers.get("X-Amz-Target"), "body": body})
            well_formed = (
                self.headers.get("Content-Type") == "application/x-amz-json-1.1"
                and str(self.headers.get("Authorization", "")).startswith("AWS4-HMAC-SHA256 ")
                and self.headers.get("X-Amz-Target") == "TrentService.Encrypt"
                and body.get("EncryptionContext", {}).get("tenant_id")
            )
            status, error = (
                (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
                if well_formed
                else (400, {"__type": "ValidationException", "message": "bad request"})
            )
            data = json.dumps(error).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_throttling_kms_is_retried_within_the_bound_then_a_503(
    acme: World, throttling_kms: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = throttling_kms
    with override_settings(**kms(url)):
        response, elapsed = add_through_the_api(acme)
    assert_unavailable(response)
    assert [r["target"] for r in seen] == ["TrentService.Encrypt"] * 2
    assert elapsed < 5, elapsed
    nothing_written(acme)
    with override_settings(**kms(url)), tenant_context(acme.tenant):
        reset_backends()
        with pytest.raises(CredentialStoreUnavailable) as e:
            make(acme)
    assert str(e.value) == "AWS KMS is throttling requests (ThrottlingException)."


# --------------------------------------------------------------------------- an agent run


@pytest.fixture
def pro(stack: None) -> Iterator[World]:  # noqa: F811
    world = build_world("pro-firm")
    set_plan(world.tenant, Tenant.Plan.PRO)
    yield world


def test_an_agent_run_whose_key_cannot_be_unlocked_fails_clearly(
    pro: World, silent: SilentServer
) -> None:
    # The tenant's OpenAI key, wrapped by Vault while it was up (the rows as it left them).
    with tenant_context(pro.tenant):
        TenantDataKey.objects.create(
            version=1,
            wrapped_key=b"vault:v1:" + b"A" * 60,
            kek_backend="vault_transit",
            kek_version="1",
        )
        Credential.objects.create(
            name="openai", kind="openai", ciphertext=b"x" * 48, nonce=b"n" * 12, key_version=1
        )
        TenantEntitlement.objects.create(
            kind="model",
            name="gpt-4o-mini",
            config={"provider": "openai", "model": "gpt-4o-mini", "default": True},
        )
        TenantEntitlement.objects.create(kind="model", name="offline-extractive", effect="revoke")
    with override_settings(**vault(f"http://127.0.0.1:{silent.port}")):
        started = time.monotonic()
        run_id, _ = ask(pro, "How should I price a diagnostic?")
        elapsed = time.monotonic() - started
    run = get_run(pro, run_id)
    assert run.status == AgentRun.Status.FAILED
    assert run.error == "credential_store_unavailable"
    assert elapsed < 5, elapsed
    consultant = browser(pro.consultant)
    conversation = pro.conversations[0].id
    thread = text(consultant.get(f"/app/conversations/{conversation}/"))
    assert "the credential store (KMS or Vault) did not unlock the model&#x27;s key" in thread
    client_view = text(browser(pro.client).get(f"/chat/{conversation}/"))
    assert "The assistant could not answer this one." in client_view
    assert "KMS" not in client_view
    # The product goes on: the consultant's own reply needs no credential.
    reply = consultant.post(
        f"/app/conversations/{conversation}/reply", {"body": "I will call you tomorrow."}
    )
    assert reply.status_code == 302
