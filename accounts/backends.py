"""mozilla-django-oidc, bound to tenants: the tenant comes from a signed claim.

Endpoints come from the provider's discovery document (or explicit OIDC_OP_* settings). The
ID token is verified by `accounts.oidc.verify_jwt` (issuer, audience = our client id, expiry,
RS256/ES256 only, key from the cached JWKS) instead of the library's check, which does not
verify issuer or audience. The user is found by (iss, sub), bound to the claimed tenant at
first login, and refused if a later token claims another tenant.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from accounts.models import User
from accounts.oidc import (
    InvalidToken,
    TenantClaimMismatch,
    bind_user,
    describe_claims,
    endpoint,
    verify_jwt,
)
from accounts.queries import find_user, user_by_id
from audit.actions import record_audit_event
from tenants.context import tenant_context

logger = logging.getLogger(__name__)

_ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}


def oidc_setting(attr: str, *args: Any) -> Any:
    """mozilla-django-oidc's settings lookup, with endpoints filled from discovery."""
    if attr in _ENDPOINTS:
        return endpoint(attr, _ENDPOINTS[attr])
    if args:
        return getattr(settings, attr, args[0])
    return getattr(settings, attr)


class TenantOIDCBackend(OIDCAuthenticationBackend):
    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds the backend for every request with a session (get_user); endpoints
        # are looked up only when a login actually needs them (discovery is a network call).
        self.UserModel = User

    OIDC_RP_SIGN_ALGO = "RS256"
    OIDC_RP_IDP_SIGN_KEY = None

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:
        return str(oidc_setting("OIDC_OP_TOKEN_ENDPOINT"))

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:
        return str(oidc_setting("OIDC_OP_USER_ENDPOINT"))

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:
        return str(oidc_setting("OIDC_OP_JWKS_ENDPOINT"))

    @property
    def OIDC_RP_CLIENT_ID(self) -> str:
        return str(settings.OIDC_RP_CLIENT_ID)

    @property
    def OIDC_RP_CLIENT_SECRET(self) -> str:
        return str(settings.OIDC_RP_CLIENT_SECRET)

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        try:
            claims = verify_jwt(token, audience=settings.OIDC_RP_CLIENT_ID)
        except InvalidToken as exc:
            raise SuspiciousOperation(f"ID token rejected: {exc}") from None
        if claims.get("nonce") != kwargs.get("nonce"):
            raise SuspiciousOperation("ID token nonce does not match this login.")
        return claims

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        # The ID token's claims are signed; the userinfo endpoint's are not. The tenant and
        # identity come from the ID token only.
        request: HttpRequest = self.request
        try:
            binding = bind_user(payload, sync_role=True)
        except TenantClaimMismatch as exc:
            logger.warning("login refused, tenant claim changed: %s", describe_claims(payload))
            if exc.user.tenant_id is not None:  # always: only bound accounts mismatch
                with tenant_context(exc.user.tenant_id):
                    record_audit_event(
                        "auth.login_refused",
                        actor=exc.user,
                        resource_type="user",
                        resource_id=exc.user.pk,
                        context={"reason": "tenant_claim_changed", "claimed_tenant": exc.claimed},
                    )
            request.oidc_refusal = "tenant_claim_changed"  # type: ignore[attr-defined]
            return None
        except InvalidToken as exc:
            logger.warning("login refused: %s (%s)", exc, describe_claims(payload))
            request.oidc_refusal = "unknown_tenant"  # type: ignore[attr-defined]
            return None
        user = binding.user
        if user.tenant_id is not None and user.is_active:
            with tenant_context(user.tenant_id, user_id=user.pk):
                record_audit_event(
                    "auth.login",
                    actor=user,
                    resource_type="user",
                    resource_id=user.pk,
                    context={"method": "oidc", "first_login": binding.created},
                )
        return user

    def get_user(self, user_id: Any) -> User | None:
        # Before the tenant is entered: one signed lookup (accounts/queries.py). A
        # deactivated account's sessions end at its next request.
        user = user_by_id(user_id)
        return user if user is not None and user.is_active else None


class AccountLookupBackend(ModelBackend):
    """Django's password backend (platform staff at the admin; the development provider's
    directory) reading accounts through signed lookups: `accounts_user` is under row-level
    security and no tenant is entered yet."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if username is None or password is None:
            return None
        user = find_user("username", str(username))
        if user is None:
            User().set_password(password)  # the same time for an unknown name
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None

    def get_user(self, user_id: Any) -> User | None:
        user = user_by_id(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None
