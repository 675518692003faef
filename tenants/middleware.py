"""Enter the authenticated principal's tenant for the whole request (DESIGN.md invariant 4),
and refuse unreadable input before any view runs (`InputGuardMiddleware`).

The tenant comes from the verified principal (a user's immutable tenant, an API key's
tenant, or a staff member's open support session), never from the body, query string or a
header the client controls. `settings.TENANT_CONTEXT_RESOLVER` names the function that
answers "which tenant, through which support session?" for a request; `tenant_context`
then opens the request's transaction and sets the database setting in it, and the view's
ATOMIC_REQUESTS block nests inside. Requests with no tenant run without one: raw SQL sees
zero tenant rows and the ORM refuses.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import NamedTuple

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.handlers.exception import response_for_exception
from django.db import DataError
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from tenants.context import (
    DIRECTORY,
    Principal,
    TenantContextRefused,
    current_principal,
    tenant_context,
)
from tenants.inputs import BadInput, guard_request

logger = logging.getLogger(__name__)


class RequestTenant(NamedTuple):
    tenant_id: uuid.UUID
    principal: Principal


def principal_tenant(request: HttpRequest) -> RequestTenant | None:
    """Default resolver: the authenticated principal's own tenant."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    tenant_id = getattr(user, "tenant_id", None)
    if tenant_id is None:
        return None
    if getattr(user, "actor_type", None) == "api_key":
        return RequestTenant(tenant_id, Principal.api_key(user.pk))
    return RequestTenant(tenant_id, Principal.user(user.pk))


class TenantContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        path = getattr(settings, "TENANT_CONTEXT_RESOLVER", "")
        self.resolve: Callable[[HttpRequest], RequestTenant | None] = (
            import_string(path) if path else principal_tenant
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if current_principal() == DIRECTORY:
            return self.get_response(request)  # the development provider's own requests
        resolved = self.resolve(request)
        if resolved is None:
            return self.get_response(request)
        with ExitStack() as stack:
            try:
                stack.enter_context(
                    tenant_context(resolved.tenant_id, principal=resolved.principal)
                )
            except TenantContextRefused as exc:
                # The database refused the principal (deactivated, tenant suspended, key
                # revoked, support session ended or expired): the request goes on outside
                # any tenant; a refused user or key is not signed in at all.
                logger.info("tenant context refused for %s: %s", exc.principal.kind, exc.reason)
            else:
                return self.get_response(request)
        if resolved.principal.kind in ("user", "api_key"):
            request.user = AnonymousUser()
        return self.get_response(request)


class InputGuardMiddleware:
    """What a request carries is checked before any view reads it (`tenants.inputs`), and a
    value the database still refuses in a view is a 400, not a 500: the view's transaction
    has rolled back by then, so nothing is half-written."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        guard_request(request)  # BadInput: Django's 400 handler answers
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DataError):
            return None
        logger.warning(
            "database refused a value in %s %s: %s",
            request.method,
            request.path_info,
            type(exception.__cause__ or exception).__name__,
        )
        return response_for_exception(
            request,
            BadInput(
                "invalid_value",
                "A value in the request is out of range or too long.",
            ),
        )
