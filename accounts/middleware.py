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

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse

from accounts.api_keys import authenticate_api_key, looks_like_api_key
from accounts.oidc import InvalidToken, TenantClaimMismatch, bind_user, verify_jwt

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
