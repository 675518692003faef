"""OpenID Connect: provider discovery, JWKS cache, token verification, tenant binding.

One verifier serves both the browser login (ID tokens, audience = our client id) and the
API (bearer access tokens, audience = OIDC_API_AUDIENCE). No network call on the hot path:
keys are cached for OIDC_JWKS_TTL_SECONDS, and an unknown `kid` triggers at most one
refetch per OIDC_JWKS_COOLDOWN_SECONDS (so a flood of forged kids cannot hammer the provider).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.shortcuts import resolve_url

from accounts.models import Membership, User
from accounts.queries import find_user
from tenants.context import tenant_context
from tenants.models import Tenant

logger = logging.getLogger(__name__)


class InvalidToken(Exception):
    """A bearer or ID token that must not be trusted. The message is safe to show."""


class TenantClaimMismatch(Exception):
    """A known subject arrived with a different tenant claim than the one it is bound to."""

    def __init__(self, user: User, claimed: str) -> None:
        super().__init__("This account belongs to another organisation.")
        self.user = user
        self.claimed = claimed


# --------------------------------------------------------------------------- discovery

_discovery_lock = threading.Lock()
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


def provider_metadata() -> dict[str, Any]:
    """The provider's /.well-known/openid-configuration, cached for the JWKS TTL."""
    issuer = settings.OIDC_ISSUER
    if not issuer:
        return {}
    now = time.monotonic()
    with _discovery_lock:
        cached = _discovery.get(issuer)
        if cached and now - cached[0] < settings.OIDC_JWKS_TTL_SECONDS:
            return cached[1]
    response = requests.get(
        f"{issuer}/.well-known/openid-configuration", timeout=settings.OIDC_TIMEOUT
    )
    response.raise_for_status()
    metadata = response.json()
    if metadata.get("issuer", "").rstrip("/") != issuer:
        raise InvalidToken("The provider's discovery document names another issuer.")
    with _discovery_lock:
        _discovery[issuer] = (now, metadata)
    return metadata


def endpoint(setting: str, metadata_key: str) -> str:
    explicit = getattr(settings, setting, "")
    return explicit or provider_metadata().get(metadata_key, "")


# --------------------------------------------------------------------------- JWKS


@dataclass
class JWKSCache:
    ttl: float
    cooldown: float
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _fetch(self) -> None:
        url = endpoint("OIDC_OP_JWKS_ENDPOINT", "jwks_uri")
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        keys: dict[str, jwt.PyJWK] = {}
        for data in response.json().get("keys", []):
            if data.get("use", "sig") != "sig" or "kid" not in data:
                continue
            try:
                keys[data["kid"]] = jwt.PyJWK(data)
            except jwt.PyJWTError:
                logger.warning("ignoring a JWKS key the verifier cannot use (kid=%s)", data["kid"])
        self.keys = keys
        self.fetched_at = time.monotonic()

    def get(self, kid: str) -> jwt.PyJWK | None:
        with self.lock:
            now = time.monotonic()
            stale = now - self.fetched_at > self.ttl
            if stale or (kid not in self.keys and now - self.fetched_at > self.cooldown):
                try:
                    self._fetch()
                except (requests.RequestException, ValueError) as exc:
                    logger.warning("JWKS refresh failed: %s", type(exc).__name__)
                    if not self.keys:
                        raise InvalidToken(
                            "The identity provider's keys are unavailable."
                        ) from None
            return self.keys.get(kid)


_jwks: JWKSCache | None = None


def jwks() -> JWKSCache:
    global _jwks
    if _jwks is None:
        _jwks = JWKSCache(
            ttl=settings.OIDC_JWKS_TTL_SECONDS, cooldown=settings.OIDC_JWKS_COOLDOWN_SECONDS
        )
    return _jwks


def reset_caches() -> None:
    """Forget discovery and keys (tests, or after changing OIDC settings at runtime)."""
    global _jwks
    _jwks = None
    with _discovery_lock:
        _discovery.clear()


# --------------------------------------------------------------------------- verification


def verify_jwt(token: str, *, audience: list[str] | str) -> dict[str, Any]:
    """Verify signature (RS256/ES256 only, key by `kid` from the provider's JWKS), `iss`,
    `aud`, `exp`/`nbf`/`iat` with a small leeway. Raises InvalidToken."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("The token is malformed.") from None
    alg = header.get("alg")
    if alg not in settings.OIDC_ALLOWED_ALGORITHMS:
        raise InvalidToken("The token's signing algorithm is not accepted.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("The token names no signing key.")
    key = jwks().get(kid)
    if key is None:
        raise InvalidToken("The token's signing key is unknown.")
    if key.algorithm_name != alg:  # e.g. an ES256 header on an RSA key
        raise InvalidToken("The token's algorithm does not match its key.")
    try:
        return jwt.decode(
            token,
            key=key.key,
            algorithms=[alg],
            audience=audience,
            issuer=settings.OIDC_ISSUER,
            leeway=settings.OIDC_LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("The token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("The token is not valid yet.") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("The token is for another audience.") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("The token is from another issuer.") from None
    except jwt.PyJWTError:
        raise InvalidToken("The token's signature or claims are invalid.") from None


# --------------------------------------------------------------------------- tenant binding


def tenant_from_claim(claims: dict[str, Any]) -> Tenant | None:
    value = claims.get(settings.OIDC_TENANT_CLAIM)
    if not isinstance(value, str) or not value:
        return None
    try:
        return Tenant.objects.filter(id=uuid.UUID(value)).first()
    except ValueError:
        return Tenant.objects.filter(slug=value).first()


def claim_names(tenant: Tenant, value: object) -> bool:
    """Whether a tenant claim names `tenant`, read as tenant_from_claim reads it (a UUID is the
    tenant's id, anything else its slug)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        return uuid.UUID(value) == tenant.id
    except ValueError:
        return value == tenant.slug


def role_from_claims(claims: dict[str, Any]) -> str | None:
    roles = claims.get(settings.OIDC_ROLES_CLAIM)
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list):
        return None
    # The strongest role named wins; unknown names are ignored.
    for role in Membership.Role.values:
        if role in roles:
            return role
    return None


@dataclass(frozen=True)
class Binding:
    user: User
    created: bool


def bind_user(claims: dict[str, Any], *, sync_role: bool) -> Binding:
    """Find or create the user for (iss, sub) and bind it to the claimed tenant, once.

    A subject bound to tenant A that later arrives with tenant B is refused
    (TenantClaimMismatch). A claim that names no known tenant is refused (InvalidToken).
    """
    issuer, subject = str(claims["iss"]).rstrip("/"), str(claims["sub"])
    claimed = claims.get(settings.OIDC_TENANT_CLAIM)
    # One query on the hot path (every bearer request): the user with the tenant it is bound
    # to, through a signed lookup (no tenant is entered yet; accounts/queries.py).
    user = find_user("oidc", f"{issuer} {subject}")
    if user is not None and user.tenant is not None:
        if not claim_names(user.tenant, claimed):
            raise TenantClaimMismatch(user, str(claims.get(settings.OIDC_TENANT_CLAIM, "")))
        tenant: Tenant | None = user.tenant
    else:
        tenant = tenant_from_claim(claims)
    if tenant is None:
        raise InvalidToken("The token does not name a known organisation.")
    if tenant.status != Tenant.Status.ACTIVE:
        raise InvalidToken("This organisation's account is not active.")
    if user is not None and user.tenant_id is not None and not sync_role:
        return Binding(user=user, created=False)  # bound, and nothing to write

    if user is not None and user.tenant_id is None:
        # An account of the platform's own (staff): never bound into an organisation.
        raise InvalidToken("This identity belongs to a platform account, not to an organisation.")

    created = False
    # Written in the claimed tenant's context: people are tenant rows.
    with transaction.atomic(), tenant_context(tenant):
        if user is None:
            try:
                with transaction.atomic():
                    user = User(
                        username=f"{tenant.slug}:{uuid.uuid4().hex[:12]}",
                        email=str(claims.get("email", ""))[:254],
                        first_name=str(claims.get("given_name", ""))[:150],
                        last_name=str(claims.get("family_name", ""))[:150],
                        oidc_issuer=issuer,
                        oidc_subject=subject,
                        tenant=tenant,
                    )
                    user.set_unusable_password()
                    user.save()
                created = True
            except IntegrityError:  # a concurrent first login won the race
                winner = find_user("oidc", f"{issuer} {subject}")
                if winner is None:
                    raise InvalidToken("The account could not be created; sign in again.") from None
                if winner.tenant_id != tenant.id:
                    raise TenantClaimMismatch(winner, str(tenant.id)) from None
                user = winner
        role = role_from_claims(claims)
        if created or sync_role:
            membership = Membership.objects.filter(user=user).first()
            if membership is None:
                Membership.objects.create(user=user, role=role or Membership.Role.CLIENT)
            elif role and membership.role != role:
                membership.role = role
                membership.save(update_fields=["role"])
    return Binding(user=user, created=created)


def provider_logout_url(request: HttpRequest) -> str:
    """Where mozilla-django-oidc's logout sends the browser: the provider's end-session
    endpoint when it has one (RP-initiated logout), else our home page."""
    home = request.build_absolute_uri(resolve_url(settings.LOGOUT_REDIRECT_URL))
    try:
        end_session = endpoint("OIDC_OP_LOGOUT_ENDPOINT", "end_session_endpoint")
    except (requests.RequestException, ValueError, InvalidToken):
        end_session = ""
    if not end_session:
        return home
    params = {"post_logout_redirect_uri": home, "client_id": settings.OIDC_RP_CLIENT_ID}
    id_token = request.session.get("oidc_id_token")
    if id_token:
        params["id_token_hint"] = id_token
    return f"{end_session}?{urlencode(params)}"


def describe_claims(claims: dict[str, Any]) -> str:
    """A log-safe summary of a token's claims (no token, no email)."""
    return json.dumps(
        {
            "iss": claims.get("iss"),
            "sub": claims.get("sub"),
            "tenant": claims.get(settings.OIDC_TENANT_CLAIM),
        },
        sort_keys=True,
    )
