"""Verify `Authorization: Bearer …` before the tenant is entered.

A JWT from the identity provider (audience OIDC_API_AUDIENCE) or a partner API key becomes
`request.user`; the tenant middleware then enters that principal's tenant for the whole
view. A bad token is remembered (`request.bearer_error`) and the DRF authentication class
turns it into a 401 with `WWW-Authenticate`. A bearer request never falls back to the
session cookie.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse

from accounts.api_keys import authenticate_api_key, looks_like_api_key
from accounts.oidc import InvalidToken, TenantClaimMismatch, bind_user, verify_jwt
from accounts.support import is_support_staff
from tenants.context import TenantContextRefused, platform_context

logger = logging.getLogger(__name__)


def bearer_token(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


class BearerAuthenticationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = bearer_token(request)
        if token is not None:
            request.user = AnonymousUser()  # never the session's user on a bearer request
            request.auth_method = None  # type: ignore[attr-defined]
            try:
                self.authenticate(request, token)
            except InvalidToken as exc:
                request.bearer_error = str(exc)  # type: ignore[attr-defined]
            except TenantClaimMismatch as exc:
                logger.warning(
                    "bearer token refused: tenant claim changed for user %s", exc.user.pk
                )
                request.bearer_error = str(exc)  # type: ignore[attr-defined]
        return self.get_response(request)

    def authenticate(self, request: HttpRequest, token: str) -> None:
        if not token:
            raise InvalidToken("The bearer token is empty.")
        if looks_like_api_key(token):
            principal = authenticate_api_key(token)
            if principal is None:
                raise InvalidToken("The API key is invalid, expired or revoked.")
            request.user = principal  # type: ignore[assignment]
            request.auth_method = "api_key"  # type: ignore[attr-defined]
            return
        if not settings.OIDC_ISSUER:
            raise InvalidToken("Bearer tokens are not configured (OIDC_ISSUER).")
        claims = verify_jwt(token, audience=settings.OIDC_API_AUDIENCE)
        binding = bind_user(claims, sync_role=False)
        if not binding.user.is_active:
            raise InvalidToken("This account is disabled.")
        request.user = binding.user
        request.auth_method = "jwt"  # type: ignore[attr-defined]
        request.token_claims = claims  # type: ignore[attr-defined]


class StaffPlatformMiddleware:
    """Support admin requests of platform staff run in a verified platform context, entered
    before django-otp reads the staff member's second factor: devices are platform rows
    (accounts migration 0008). Tenant data still needs a support session (the tenant
    middleware switches into it for the view)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith("/admin/"):
            return self.get_response(request)
        user = getattr(request, "user", None)  # Django's lazy user: a signed lookup
        if not is_support_staff(user):
            return self.get_response(request)
        with ExitStack() as stack:
            try:
                stack.enter_context(platform_context(user.pk))  # type: ignore[union-attr]
            except TenantContextRefused:  # deactivated since the session began: no factors
                logger.info("platform context refused for staff %s", user.pk)  # type: ignore[union-attr]
            return self.get_response(request)
