"""Every API error is JSON with a stable `code` and a human `message`.

{"code": "not_found", "message": "Not found."}
{"code": "invalid", "message": "Some fields are invalid.", "fields": {"title": ["..."]}}
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from agents.entitlements import NotInPlan
from tenants.context import TenantScopeError
from tenants.vault.backends import CredentialStoreUnavailable

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


def _raised_from(exc: BaseException | None, kinds: tuple[type[BaseException], ...]) -> bool:
    """The error, or one it was raised while handling, is one of `kinds`."""
    for _ in range(10):
        if exc is None:
            return False
        if isinstance(exc, kinds):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def database_unavailable(exc: BaseException | None) -> bool:
    """The error, or one it was raised while handling, says the database could not be reached
    or the connection broke (a restart, a failover): a moment's outage, not a bug."""
    from django.db import InterfaceError, OperationalError

    return _raised_from(exc, (OperationalError, InterfaceError))


def redis_unavailable(exc: BaseException | None) -> bool:
    """The same for Redis (sessions, the cache): it could not be reached or timed out."""
    return _raised_from(exc, (RedisConnectionError, RedisTimeoutError))


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


def rate_limited_message(retry_after: int) -> str:
    """What a refused request is told, whichever limit refused it (Retry-After: the same)."""
    return f"Too many requests; try again in {retry_after} s."


def limiter_response(exc: Exception) -> Response | None:
    from billing.limiter import HardCapReached, LimiterUnavailable, RateLimited

    if isinstance(exc, RateLimited):
        response = Response(
            error_body("rate_limited", rate_limited_message(exc.retry_after)),
            status=status.HTTP_429_TOO_MANY_REQUESTS,
        )
        response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, HardCapReached):
        return Response(
            error_body(
                "spend_cap_reached",
                "This organisation's assistant has reached its usage limit for the month.",
            ),
            status=status.HTTP_402_PAYMENT_REQUIRED,
        )
    if isinstance(exc, LimiterUnavailable):
        response = Response(
            error_body(
                "agent_unavailable",
                "The assistant is temporarily unavailable; nothing was sent. Try again "
                "in a minute.",
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        response["Retry-After"] = "30"
        return response
    return None


def refusal_response(exc: BaseException | None) -> Response | None:
    """A grant beyond the plan (403 naming the plan), or the credential store unavailable for
    the call that needed it (503 with Retry-After; nothing was saved)."""
    if isinstance(exc, NotInPlan):
        return Response(error_body(exc.code, exc.message, plan=exc.plan), status=403)
    if _raised_from(exc, (CredentialStoreUnavailable,)):
        response = Response(
            error_body(CredentialStoreUnavailable.code, CredentialStoreUnavailable.user_message),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        response["Retry-After"] = str(CredentialStoreUnavailable.retry_after)
        return response
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    limited = limiter_response(exc) or refusal_response(exc)
    if limited is not None:
        from rest_framework.views import set_rollback

        set_rollback()
        return limited
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
    elif isinstance(exc, exceptions.Throttled):
        # DRF's own text and header round the wait down ("available in 0 seconds").
        retry_after = max(1, math.ceil(getattr(exc, "wait", None) or 1))
        body = error_body(code, rate_limited_message(retry_after))
        response["Retry-After"] = str(retry_after)
    else:
        body = error_body(code, str(exc.detail))
    response.data = body
    if response.status_code == status.HTTP_429_TOO_MANY_REQUESTS and "Retry-After" not in response:
        response["Retry-After"] = "1"
    return response
