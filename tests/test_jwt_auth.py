"""Bearer JWTs for the API: every bad token is a 401, keys are cached and rotate.

The identity provider here is a small HTTP server of the test's own that publishes a JWKS
(real keys, real signatures): the test decides which keys it publishes and counts fetches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from accounts import oidc
from accounts.models import Membership, User
from tenants.context import platform_context, tenant_context
from tenants.models import Tenant
from tests.factories import World, build_world

ISSUER = "https://login.example.test"
AUDIENCE = "playbook-api"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def public_jwk(self) -> dict[str, Any]:
        algo = (
            jwt.algorithms.RSAAlgorithm if self.alg.startswith("RS") else jwt.algorithms.ECAlgorithm
        )
        data = json.loads(algo.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header}
        )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class FakeProvider:
    url: str
    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0

    def publish(self, *keys: SigningKey) -> None:
        self.keys = list(keys)


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rsa": rsa_key("rsa-1"), "ec": ec_key("ec-1"), "next": rsa_key("rsa-2")}


@pytest.fixture
def provider(keys: dict[str, SigningKey]) -> Iterator[FakeProvider]:
    state = FakeProvider(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            body = json.dumps({"keys": [k.public_jwk for k in state.keys]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_port}/jwks.json"
    state.publish(keys["rsa"], keys["ec"])
    with override_settings(
        OIDC_ISSUER=ISSUER,
        OIDC_OP_JWKS_ENDPOINT=state.url,
        OIDC_API_AUDIENCE=[AUDIENCE],
        OIDC_JWKS_COOLDOWN_SECONDS=30,
    ):
        oidc.reset_caches()
        yield state
    oidc.reset_caches()
    server.shutdown()


@pytest.fixture
def acme(db: None) -> World:
    return build_world("acme")


def claims_for(world: World, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "subject-olivia",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "tenant_id": str(world.tenant.id),
        "roles": ["owner"],
        "email": "olivia@acme.example",
        **overrides,
    }


def call(token: str, path: str = "/api/v1/me") -> Any:
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {token}")


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.content
    assert response.json()["code"] == "authentication_failed"
    assert response["WWW-Authenticate"] == 'Bearer realm="playbook", error="invalid_token"'


def test_a_valid_rs256_token_authenticates_and_binds_the_tenant(
    provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    response = call(keys["rsa"].sign(claims_for(acme)))
    assert response.status_code == 200, response.content
    me = response.json()
    assert me["tenant"]["id"] == str(acme.tenant.id)
    assert me["role"] == "owner"
    assert me["auth"] == "jwt"
    with tenant_context(acme.tenant):
        user = User.objects.get(oidc_issuer=ISSUER, oidc_subject="subject-olivia")
    assert user.tenant_id == acme.tenant.id
    with tenant_context(acme.tenant):
        assert Membership.objects.get(user=user).role == "owner"
    # It reaches tenant data, and only its tenant's.
    listed = call(keys["rsa"].sign(claims_for(acme)), "/api/v1/conversations/")
    assert {c["id"] for c in listed.json()["results"]} == acme.conversation_ids


def test_es256_is_accepted_too(
    provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    assert call(keys["ec"].sign(claims_for(acme, sub="subject-ec"))).status_code == 200


@pytest.mark.parametrize(
    "case",
    [
        "alg_none",
        "hs256_with_public_key",
        "unknown_kid",
        "no_kid",
        "wrong_audience",
        "wrong_issuer",
        "expired",
        "not_yet_valid",
        "tampered",
        "garbage",
        "rsa_header_on_ec_key",
        "missing_exp",
    ],
)
def test_bad_tokens_are_401(
    case: str, provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    rsa_key_, now = keys["rsa"], int(time.time())
    good = claims_for(acme)
    if case == "alg_none":
        token = jwt.encode(good, "", algorithm="none", headers={"kid": "rsa-1"})
    elif case == "hs256_with_public_key":
        public_pem = rsa_key_.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # The classic key-confusion attack: HMAC "signed" with the published RSA key.
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        body = b64url(json.dumps(good).encode())
        sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        token = f"{head}.{body}.{b64url(sig)}"
    elif case == "unknown_kid":
        token = SigningKey("rsa-unpublished", "RS256", keys["next"].private).sign(good)
    elif case == "no_kid":
        token = jwt.encode(good, rsa_key_.private, algorithm="RS256")
    elif case == "wrong_audience":
        token = rsa_key_.sign({**good, "aud": "someone-else"})
    elif case == "wrong_issuer":
        token = rsa_key_.sign({**good, "iss": "https://evil.example.test"})
    elif case == "expired":
        token = rsa_key_.sign({**good, "iat": now - 3600, "exp": now - 120})
    elif case == "not_yet_valid":
        token = rsa_key_.sign({**good, "nbf": now + 600})
    elif case == "tampered":
        signed_head, _, signature = rsa_key_.sign(good).split(".")
        forged = b64url(json.dumps({**good, "tenant_id": str(uuid.uuid4())}).encode())
        token = f"{signed_head}.{forged}.{signature}"
    elif case == "garbage":
        token = "not.a.jwt"
    elif case == "rsa_header_on_ec_key":
        token = jwt.encode(good, rsa_key_.private, algorithm="RS256", headers={"kid": "ec-1"})
    elif case == "missing_exp":
        token = rsa_key_.sign({k: v for k, v in good.items() if k != "exp"})
    assert_401(call(token))
    # No account was made in any tenant (people are read in their tenant's context).
    for tenant in Tenant.objects.all():
        with tenant_context(tenant):
            assert not User.objects.filter(oidc_issuer=ISSUER).exists()


def test_clock_skew_within_the_leeway_is_tolerated(
    provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    now = int(time.time())
    token = keys["rsa"].sign(claims_for(acme, iat=now - 600, exp=now - 10, nbf=now + 10))
    assert call(token).status_code == 200


def test_no_network_call_on_the_hot_path(
    provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    for _ in range(20):
        assert call(keys["rsa"].sign(claims_for(acme))).status_code == 200
    assert provider.fetches == 1
    # A flood of forged key ids triggers at most one refetch per cooldown.
    for i in range(20):
        forged = SigningKey(f"forged-{i}", "RS256", keys["next"].private)
        assert_401(call(forged.sign(claims_for(acme))))
    assert provider.fetches <= 2


def test_key_rotation_without_restart(
    provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    with override_settings(OIDC_JWKS_COOLDOWN_SECONDS=0):
        oidc.reset_caches()
        old_token = keys["rsa"].sign(claims_for(acme))
        assert call(old_token).status_code == 200
        # The provider publishes a new key and drops the old one.
        provider.publish(keys["next"])
        assert call(keys["next"].sign(claims_for(acme))).status_code == 200
        assert_401(call(old_token))


def test_a_token_that_moves_the_subject_to_another_tenant_is_refused(
    provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    globex = build_world("globex")
    assert call(keys["rsa"].sign(claims_for(acme))).status_code == 200
    moved = call(keys["rsa"].sign(claims_for(globex)))
    assert_401(moved)
    assert moved.json()["message"] == "This account belongs to another organisation."
    unknown = call(keys["rsa"].sign(claims_for(acme, sub="someone", tenant_id=str(uuid.uuid4()))))
    assert_401(unknown)


def test_a_bearer_request_never_falls_back_to_the_session(
    provider: FakeProvider, acme: World
) -> None:
    browser = Client()
    browser.force_login(acme.owner)
    assert browser.get("/api/v1/me").status_code == 200
    assert_401(browser.get("/api/v1/me", HTTP_AUTHORIZATION="Bearer nonsense"))


def test_a_bound_subject_costs_one_query_and_its_claim_is_still_checked(
    provider: FakeProvider, keys: dict[str, SigningKey], acme: World
) -> None:
    globex = build_world("globex")
    assert call(keys["rsa"].sign(claims_for(acme))).status_code == 200  # binds the subject
    # Every later bearer request: the user with its tenant, one statement, no transaction.
    with CaptureQueriesContext(connection) as queries:
        binding = oidc.bind_user(claims_for(acme), sync_role=False)
    assert binding.user.tenant_id == acme.tenant.id and not binding.created
    assert len(queries) == 1, [q["sql"] for q in queries]
    # The claim may name the tenant by slug, as at first login; another tenant is refused,
    # by id or by slug, and so is the subject's own tenant once it is no longer active.
    assert call(keys["rsa"].sign(claims_for(acme, tenant_id=acme.tenant.slug))).status_code == 200
    for other in (str(globex.tenant.id), globex.tenant.slug, ""):
        assert_401(call(keys["rsa"].sign(claims_for(acme, tenant_id=other))))
    acme.tenant.status = "suspended"
    with platform_context():
        acme.tenant.save(update_fields=["status"])
    refused = call(keys["rsa"].sign(claims_for(acme)))
    assert_401(refused)
    assert refused.json()["message"] == "This organisation's account is not active."
