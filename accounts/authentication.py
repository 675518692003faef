"""DRF side of bearer authentication (the middleware did the verifying)."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request


class BearerAuthentication(authentication.BaseAuthentication):
    www_authenticate_realm = "playbook"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        django_request = request._request
        error = getattr(django_request, "bearer_error", None)
        if error:
            raise exceptions.AuthenticationFailed(error)
        method = getattr(django_request, "auth_method", None)
        if method is None:
            return None  # no bearer credential: let the session authenticator look
        return django_request.user, method

    def authenticate_header(self, request: Request) -> str:
        error = getattr(request._request, "bearer_error", None)
        if error:
            return f'Bearer realm="{self.www_authenticate_realm}", error="invalid_token"'
        return f'Bearer realm="{self.www_authenticate_realm}"'
