"""Every API error is JSON with a stable `code` and a human `message`.

{"code": "not_found", "message": "Not found."}
{"code": "invalid", "message": "Some fields are invalid.", "fields": {"title": ["..."]}}
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tenants.context import TenantScopeError

NOT_FOUND_MESSAGE = "Not found."

_CODES: dict[type[Exception], str] = {
    exceptions.ValidationError: "invalid",
    exceptions.ParseError: "malformed_request",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, TenantScopeError):
        # A principal without a tenant reached tenant data: not theirs to see.
        exc = exceptions.PermissionDenied("This account does not belong to a tenant.")
    if isinstance(exc, Http404):
        # Same body for "does not exist" and "belongs to another tenant" (invariant 7).
        exc = exceptions.NotFound(NOT_FOUND_MESSAGE)
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response

    code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        if isinstance(detail, dict):
            body = error_body(code, "Some fields are invalid.", fields=detail)
        else:
            items = detail if isinstance(detail, list) else [detail]
            body = error_body(code, " ".join(str(i) for i in items) or "Invalid input.")
    elif isinstance(exc, exceptions.NotFound):
        body = error_body(code, NOT_FOUND_MESSAGE)
    else:
        body = error_body(code, str(exc.detail))
    response.data = body
    if response.status_code == status.HTTP_429_TOO_MANY_REQUESTS and "Retry-After" not in response:
        response["Retry-After"] = "1"
    return response
