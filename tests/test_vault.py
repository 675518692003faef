"""Tenant credentials: envelope encryption per tenant, pluggable KMS, decrypted only in use."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import sentry_sdk
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client, override_settings

from agents.entitlements import grant_override
from agents.tools import TOOLS, ToolContext, ToolError
from audit.actions import audit_operator
from audit.models import AuditEvent
from config.processes import free_port
from config.scrubbing import before_send
from tenants.context import tenant_context
from tenants.models import Credential, TenantDataKey
from tenants.vault.backends import VaultError, reset_backends
from tenants.vault.service import (
    CredentialNotFound,
    CredentialUseError,
    create_credential,
    decrypt,
    rotate_credential,
    use_credential,
)
from tests.factories import UserFactory, World, build_world

SECRET = "sk-test-7Hq2Lr9ZxW4mBv8NcT3yKd6PfG1sJ0aE"


def local_keys(*versions: int) -> str:
    return json.dumps(
        {
            str(v): base64.b64encode(hashlib.sha256(f"kek-{v}".encode()).digest()).decode()
            for v in versions
        }
    )


@pytest.fixture(autouse=True)
def fresh_backends() -> Iterator[None]:
    reset_backends()
    yield
    reset_backends()


@pytest.fixture
def acme(db: None) -> World:
    return build_world("acme")


@pytest.fixture
def globex(db: None) -> World:
    return build_world("globex")


def make(
    world: World, name: str = "openai", secret: str = SECRET, kind: str = "openai"
) -> Credential:
    with tenant_context(world.tenant):
        return create_credential(
            acting_user=world.owner,
            name=name,
            kind=kind,
            secret=secret,
            metadata={"base_url": "https://api.example.test/v1"},
        )


def used(world: World, name: str) -> str:
    with tenant_context(world.tenant), use_credential(name) as secret:
        return secret


# --------------------------------------------------------------------------- local backend


def test_local_round_trip_and_the_secret_is_never_stored_or_shown(acme: World) -> None:
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        credential = make(acme)
        assert bytes(credential.ciphertext) != SECRET.encode()
        assert SECRET.encode() not in bytes(credential.ciphertext)
        assert credential.last_four == SECRET[-4:]
        assert used(acme, "openai") == SECRET
        with tenant_context(acme.tenant), audit_operator():
            credential.refresh_from_db()
            assert credential.last_used_at is not None
            events = list(AuditEvent.objects.filter(resource_id=str(credential.id)))
            assert {e.action for e in events} == {"credential.created", "credential.used"}
            assert all(SECRET not in json.dumps(e.context) for e in events)
            data_key = TenantDataKey.objects.get()
            assert data_key.kek_backend == "local" and data_key.kek_version == "1"
            assert len(bytes(data_key.wrapped_key)) == 12 + 32 + 16  # nonce + key + tag


def test_a_ciphertext_moved_to_another_row_or_tenant_does_not_decrypt(
    acme: World, globex: World
) -> None:
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        original = make(acme, "openai")
        decoy = make(acme, "decoy", secret="something-else-entirely-1234")
        with tenant_context(acme.tenant):
            decoy.ciphertext, decoy.nonce = original.ciphertext, original.nonce
            with pytest.raises(VaultError, match="does not decrypt"):
                decrypt(decoy)
        # The same bytes in another tenant (with its own data key): refused as well.
        intruder = make(globex, "openai", secret="globex-own-key-000000000000")
        with tenant_context(globex.tenant):
            intruder.ciphertext, intruder.nonce = original.ciphertext, original.nonce
            intruder.key_version = original.key_version
            with pytest.raises(VaultError):
                decrypt(intruder)


def test_a_wrong_key_version_fails_clearly(acme: World) -> None:
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        credential = make(acme)
        with tenant_context(acme.tenant):
            credential.key_version = 7
            with pytest.raises(VaultError, match="data key version 7"):
                decrypt(credential)
    # The key-encryption key that wrapped the data key is gone from the configuration.
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(2)):
        reset_backends()
        with pytest.raises(VaultError, match="version 1 is not configured"):
            used(acme, "openai")


def test_kek_rotation_rewraps_and_the_old_kek_is_no_longer_needed(
    acme: World, globex: World
) -> None:
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        make(acme, "openai")
        make(acme, "crm", secret="crm-token-abcdefghijklmnop", kind="http_bearer")
        make(globex, "openai", secret="globex-secret-zyxwvutsrqpo")
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1, 2)):
        reset_backends()
        assert used(acme, "openai") == SECRET  # both versions configured: old still works
        call_command("rotate_kek", stdout=open(os.devnull, "w"))  # noqa: SIM115
        with tenant_context(acme.tenant):
            assert set(TenantDataKey.objects.values_list("kek_version", flat=True)) == {"2"}
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(2)):
        reset_backends()
        assert used(acme, "openai") == SECRET
        assert used(acme, "crm") == "crm-token-abcdefghijklmnop"
        assert used(globex, "openai") == "globex-secret-zyxwvutsrqpo"


def test_rotating_a_credential_replaces_the_secret(acme: World) -> None:
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        credential = make(acme)
        with tenant_context(acme.tenant):
            rotate_credential(
                acting_user=acme.owner,
                credential=credential,
                secret="sk-rotated-0000000000000000000000",
            )
        assert used(acme, "openai") == "sk-rotated-0000000000000000000000"


# --------------------------------------------------------------------------- no plaintext on disk


def one(conn: psycopg.Connection, query: str, params: Any = None) -> str:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return str(row[0])


def test_the_database_files_contain_no_plaintext(live_db: None) -> None:
    acme = build_world("acme")
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        make(acme)
    database = connections["default"].settings_dict["NAME"]
    admin = psycopg.conninfo.make_conninfo(settings.DATABASE_ADMIN_URL, dbname=database)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        data_dir = Path(one(conn, "SHOW data_directory"))
        files = [
            one(conn, "SELECT pg_relation_filepath(%s)", [table])
            for table in ("tenants_credential", "tenants_tenantdatakey")
        ]
    scanned = 0
    for relative in files:
        for path in data_dir.glob(relative + "*"):
            content = path.read_bytes()
            scanned += len(content)
            assert SECRET.encode() not in content
            assert SECRET[8:24].encode() not in content
    assert scanned > 0


# --------------------------------------------------------------------------- logs and Sentry


class CapturingTransport(sentry_sdk.transport.Transport):
    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.events: list[str] = []

    def capture_envelope(self, envelope: Any) -> None:
        self.events.append(envelope.serialize().decode("utf-8", "replace"))


def test_an_exception_inside_a_call_leaks_the_secret_nowhere(
    acme: World, caplog: pytest.LogCaptureFixture
) -> None:
    transport = CapturingTransport()
    sentry_sdk.init(
        dsn="https://public@sentry.example.test/1",
        transport=transport,
        before_send=cast(Any, before_send),
        include_local_variables=False,
        default_integrations=False,
    )
    logger = logging.getLogger("playbook.test.tools")
    logger.addFilter(__import__("config.scrubbing", fromlist=["SecretsFilter"]).SecretsFilter())
    try:
        with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
            make(acme)
            with (
                pytest.raises(CredentialUseError) as raised,
                tenant_context(acme.tenant),
                use_credential("openai") as secret,
            ):
                # What provider SDKs do: quote the key back in the error.
                raise RuntimeError(f"Incorrect API key provided: {secret}")
        assert SECRET not in str(raised.value)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
        with caplog.at_level(logging.ERROR, logger="playbook.test.tools"):
            try:
                raise raised.value
            except CredentialUseError:
                logger.exception("tool call failed")
                sentry_sdk.capture_exception()
            # A secret-shaped string that slipped past the vault is masked too.
            logger.error("upstream said: key %s is invalid", SECRET)
            sentry_sdk.capture_message(f"upstream said: key {SECRET} is invalid")
        sentry_sdk.flush()
        assert "tool call failed" in caplog.text
        assert SECRET not in caplog.text
        assert len(transport.events) == 2
        assert all(SECRET not in event for event in transport.events)
        assert "[redacted]" in transport.events[1]
    finally:
        sentry_sdk.init(dsn=None)


# --------------------------------------------------------------------------- tenant boundary


def test_another_tenant_cannot_list_use_or_rotate_a_credential(acme: World, globex: World) -> None:
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        credential = make(acme, "crm", secret="crm-token-abcdefghijklmnop", kind="http_bearer")
        owner_b = Client()
        owner_b.force_login(globex.owner)
        assert owner_b.get("/api/v1/credentials/").json()["results"] == []
        for method, path in (
            ("get", f"/api/v1/credentials/{credential.id}/"),
            ("post", f"/api/v1/credentials/{credential.id}/rotate/"),
            ("delete", f"/api/v1/credentials/{credential.id}/"),
        ):
            if method == "get":
                response = owner_b.get(path)
            else:
                response = getattr(owner_b, method)(
                    path,
                    data=json.dumps({"secret": "hijack-000000000000"}),
                    content_type="application/json",
                )
            assert response.status_code == 404, (method, path)
        with tenant_context(globex.tenant):
            with pytest.raises(CredentialNotFound), use_credential("crm"):
                pass
            # Even an agent tool configured (in B) with A's credential name finds nothing.
            ctx = ToolContext(
                config={"url": "https://crm.example.test/lookup", "credential": "crm"}
            )
            with pytest.raises(ToolError, match="the credential for this endpoint is missing"):
                TOOLS["http_request"].func({"query": "x"}, ctx)
        assert used(acme, "crm") == "crm-token-abcdefghijklmnop"


def test_the_api_is_write_only_for_secrets(acme: World) -> None:
    owner = Client()
    owner.force_login(acme.owner)
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        created = owner.post(
            "/api/v1/credentials/",
            {
                "name": "openai",
                "kind": "openai",
                "secret": SECRET,
                "metadata": {"base_url": "https://api.openai.com/v1"},
            },
            content_type="application/json",
        )
        assert created.status_code == 201, created.content
        body = created.json()
        assert SECRET not in created.content.decode()
        assert body["last_four"] == SECRET[-4:]
        assert "secret" not in body and "ciphertext" not in body
        listed = owner.get("/api/v1/credentials/")
        assert SECRET not in listed.content.decode()
        duplicate = owner.post(
            "/api/v1/credentials/",
            {"name": "openai", "kind": "openai", "secret": "x" * 20},
            content_type="application/json",
        )
        assert duplicate.status_code == 400
        leaky = owner.post(
            "/api/v1/credentials/",
            {"name": "x", "kind": "openai", "secret": "y" * 20, "metadata": {"api_key": "oops"}},
            content_type="application/json",
        )
        assert leaky.status_code == 400 and "metadata" in leaky.json()["fields"]
        rotated = owner.post(
            f"/api/v1/credentials/{body['id']}/rotate/",
            {"secret": "sk-new-secret-11111111111111111"},
            content_type="application/json",
        )
        assert rotated.status_code == 200 and rotated.json()["rotated_at"]
        assert used(acme, "openai") == "sk-new-secret-11111111111111111"
        consultant = Client()
        consultant.force_login(acme.consultant)
        assert consultant.get("/api/v1/credentials/").status_code == 403
        assert owner.delete(f"/api/v1/credentials/{body['id']}/").status_code == 204


# --------------------------------------------------------------------------- AWS KMS (moto)


@pytest.fixture(scope="module")
def moto_kms() -> Iterator[str]:
    """moto in server mode: a real HTTP endpoint speaking the AWS KMS API."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def kms_key(url: str) -> str:
    import boto3

    client = boto3.client("kms", region_name="eu-west-1", endpoint_url=url)
    return str(client.create_key(Description="playbook test KEK")["KeyMetadata"]["KeyId"])


def test_aws_kms_round_trip_context_binding_and_rotation(
    moto_kms: str, acme: World, globex: World
) -> None:
    first, second = kms_key(moto_kms), kms_key(moto_kms)
    kms = {
        "VAULT_BACKEND": "aws_kms",
        "VAULT_AWS_ENDPOINT_URL": moto_kms,
        "VAULT_AWS_REGION": "eu-west-1",
    }
    with override_settings(**kms, VAULT_AWS_KMS_KEY_ID=first):
        reset_backends()
        make(acme)
        assert used(acme, "openai") == SECRET
        with tenant_context(acme.tenant):
            wrapped = TenantDataKey.objects.get()
            assert wrapped.kek_backend == "aws_kms" and wrapped.kek_version == first
        # A data key wrapped for acme does not unwrap for globex (encryption context).
        with tenant_context(globex.tenant):
            TenantDataKey.objects.create(
                version=1,
                wrapped_key=bytes(wrapped.wrapped_key),
                kek_backend="aws_kms",
                kek_version=first,
            )
            fake = Credential(
                name="stolen", kind="openai", ciphertext=b"x" * 40, nonce=b"n" * 12, key_version=1
            )
            fake.save()
            with pytest.raises(VaultError, match="AWS KMS refused"):
                decrypt(fake)
            transaction.set_rollback(False)
    with override_settings(**kms, VAULT_AWS_KMS_KEY_ID=second):
        reset_backends()
        call_command("rotate_kek", "--tenant", "acme", stdout=open(os.devnull, "w"))  # noqa: SIM115
        with tenant_context(acme.tenant):
            assert TenantDataKey.objects.get().kek_version == second
        assert used(acme, "openai") == SECRET


# --------------------------------------------------------------------------- Vault transit


class TransitStandIn:
    """A local stand-in for HashiCorp Vault's transit engine (no Vault binary here): it checks
    the request shape the real API requires (token header, base64 plaintext, derivation
    context) and really encrypts, with versioned keys derived per context."""

    def __init__(self) -> None:
        self.token = "s.test-token"
        self.versions = [os.urandom(32)]
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def key(self, version: int, context: bytes) -> bytes:
        return hashlib.sha256(self.versions[version - 1] + context).digest()

    def handle(self, method: str, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.requests.append((path, body))
        if token != self.token:
            return 403, {"errors": ["permission denied"]}
        if method == "GET" and path == "/v1/transit/keys/playbook":
            return 200, {"data": {"latest_version": len(self.versions), "derived": True}}
        if method == "POST" and path == "/v1/transit/keys/playbook/rotate":
            self.versions.append(os.urandom(32))
            return 204, None
        if "context" not in body:
            return 400, {"errors": ["missing 'context' for key derivation"]}
        context = base64.b64decode(body["context"])
        if path == "/v1/transit/encrypt/playbook":
            plaintext = base64.b64decode(body["plaintext"])
            version, nonce = len(self.versions), os.urandom(12)
            sealed = nonce + AESGCM(self.key(version, context)).encrypt(nonce, plaintext, None)
            return 200, {
                "data": {"ciphertext": f"vault:v{version}:{base64.b64encode(sealed).decode()}"}
            }
        if path == "/v1/transit/decrypt/playbook":
            _, version_tag, data = body["ciphertext"].split(":", 2)
            sealed = base64.b64decode(data)
            try:
                plaintext = AESGCM(self.key(int(version_tag[1:]), context)).decrypt(
                    sealed[:12], sealed[12:], None
                )
            except Exception:
                return 400, {"errors": ["cipher: message authentication failed"]}
            return 200, {"data": {"plaintext": base64.b64encode(plaintext).decode()}}
        return 404, {"errors": []}


@pytest.fixture
def vault_server() -> Iterator[tuple[str, TransitStandIn]]:
    state = TransitStandIn()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            status, payload = state.handle(
                self.command, self.path, self.headers.get("X-Vault-Token", ""), body
            )
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", state
    finally:
        server.shutdown()


def test_vault_transit_round_trip_and_rotation(
    vault_server: tuple[str, TransitStandIn], acme: World
) -> None:
    url, state = vault_server
    transit = {
        "VAULT_BACKEND": "vault_transit",
        "VAULT_ADDR": url,
        "VAULT_TOKEN": state.token,
        "VAULT_TRANSIT_KEY": "playbook",
    }
    with override_settings(**transit):
        reset_backends()
        make(acme)
        assert used(acme, "openai") == SECRET
        encrypt = next(body for path, body in state.requests if path.endswith("/encrypt/playbook"))
        assert base64.b64decode(encrypt["context"]).decode() == str(acme.tenant.id)
        assert SECRET not in json.dumps(encrypt)  # the KMS sees the data key, never a secret
        state.versions.append(os.urandom(32))  # rotate the transit key
        call_command("rotate_kek", stdout=open(os.devnull, "w"))  # noqa: SIM115
        with tenant_context(acme.tenant):
            assert TenantDataKey.objects.get().kek_version == "2"
        assert used(acme, "openai") == SECRET
    with override_settings(**{**transit, "VAULT_TOKEN": "wrong"}):
        reset_backends()
        with pytest.raises(VaultError, match="Vault refused"):
            used(acme, "openai")


# --------------------------------------------------------------------------- agents use the vault


@pytest.fixture
def provider_stand_in() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An OpenAI-compatible chat endpoint (as Ollama or vLLM serve) and a tenant HTTP API,
    recording what they receive."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            seen.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
            )
            if self.path.endswith("/chat/completions"):
                payload: dict[str, Any] = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {
                                "role": "assistant",
                                "content": "Structure the agenda around decisions.",
                            },
                        }
                    ],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129},
                }
            else:
                payload = {"answer": "order 42 shipped"}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
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


def test_agent_model_calls_and_http_tool_read_their_keys_from_the_vault(
    live_db: None, provider_stand_in: tuple[str, list[dict[str, Any]]]
) -> None:
    from agents.models import AgentRun, TenantEntitlement
    from billing.models import UsageEvent
    from config.celery import app as celery_app

    url, seen = provider_stand_in
    acme = build_world("acme")
    # A self-hosted (OpenAI-compatible) model is in no plan: an operator's override.
    grant_override(
        staff=UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True),
        tenant=acme.tenant,
        kind="model",
        name="llama3",
        provider="openai_compatible",
        reason="Ticket 12: the customer runs its own model server",
    )
    with override_settings(
        # The provider stand-in listens on the loopback: the operator's allow-list admits it.
        VAULT_BACKEND="local",
        VAULT_LOCAL_KEYS=local_keys(1),
        OUTBOUND_ALLOWED_NETWORKS=["127.0.0.1"],
    ):
        with tenant_context(acme.tenant):
            create_credential(
                acting_user=acme.owner,
                name="local-llm",
                kind="openai_compatible",
                secret=SECRET,
                metadata={"base_url": f"{url}/v1"},
            )
            create_credential(
                acting_user=acme.owner,
                name="crm",
                kind="http_bearer",
                secret="crm-token-abcdefghijklmnop",
            )
            TenantEntitlement.objects.create(
                kind="model",
                name="llama3",
                config={"provider": "openai_compatible", "model": "llama3", "default": True},
            )
            TenantEntitlement.objects.create(
                kind="model", name="offline-extractive", effect="revoke"
            )
        client = Client()
        client.force_login(acme.client)
        celery_app.conf.task_always_eager = True
        try:
            response = client.post(
                f"/api/v1/conversations/{acme.conversations[0].id}/messages/",
                {"body": "How should I run my board meeting?"},
                content_type="application/json",
            )
        finally:
            celery_app.conf.task_always_eager = False
        assert response.status_code == 201
        with tenant_context(acme.tenant), audit_operator():
            run = AgentRun.objects.get(id=response.json()["agent_run"])
            assert run.status == AgentRun.Status.AWAITING_REVIEW, run.error
            assert run.model_name == "llama3"
            assert run.draft_message is not None
            assert run.draft_message.body == "Structure the agenda around decisions."
            usage = UsageEvent.objects.get(agent_run=run, kind="model")
            assert (usage.input_tokens, usage.output_tokens) == (120, 9)
            assert AuditEvent.objects.filter(
                action="credential.used", resource_type="credential"
            ).exists()
            # The HTTP tool, with the tenant's bearer credential.
            ctx = ToolContext(config={"url": f"{url}/lookup", "credential": "crm"})
            assert TOOLS["http_request"].func({"query": "order 42"}, ctx) == (
                '{"answer": "order 42 shipped"}'
            )
        chat = next(r for r in seen if r["path"] == "/v1/chat/completions")
        assert chat["auth"] == f"Bearer {SECRET}"
        assert chat["body"]["model"] == "llama3"
        lookup = next(r for r in seen if r["path"] == "/lookup")
        assert lookup["auth"] == "Bearer crm-token-abcdefghijklmnop"
        assert lookup["body"] == {"query": "order 42"}


def test_the_credentials_page_never_shows_a_secret(acme: World) -> None:
    owner = Client()
    owner.force_login(acme.owner)
    with override_settings(VAULT_BACKEND="local", VAULT_LOCAL_KEYS=local_keys(1)):
        page = owner.get("/app/credentials/")
        assert page.status_code == 200
        saved = owner.post(
            "/app/credentials/",
            {"name": "openai", "kind": "openai", "secret": SECRET, "base_url": ""},
        )
        assert saved.status_code == 302
        listing = owner.get("/app/credentials/").content.decode()
        assert "openai" in listing and f"…{SECRET[-4:]}" in listing
        assert SECRET not in listing
        with tenant_context(acme.tenant):
            credential = Credential.objects.get(name="openai")
        rotated = owner.post(
            f"/app/credentials/{credential.id}/rotate/", {"secret": "sk-rotated-999999999999999"}
        )
        assert rotated.status_code == 302
        assert used(acme, "openai") == "sk-rotated-999999999999999"
        consultant = Client()
        consultant.force_login(acme.consultant)
        assert consultant.get("/app/credentials/").status_code == 403
        assert owner.post(f"/app/credentials/{credential.id}/delete/").status_code == 302
        with tenant_context(acme.tenant):
            assert not Credential.objects.exists()
