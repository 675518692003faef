"""Enter the authenticated principal's tenant for the whole request (DESIGN.md invariant 4).

The tenant comes from the verified principal (a user's immutable tenant, an API key's
tenant, or a staff member's open support session), never from the body, query string or a
header the client controls. `settings.TENANT_CONTEXT_RESOLVER` names the function that
answers "which tenant, through which support session?" for a request; `tenant_context`
then opens the request's transaction and sets the database setting in it, and the view's
ATOMIC_REQUESTS block nests inside. Requests with no tenant run without one: raw SQL sees
zero tenant rows and the ORM refuses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import NamedTuple

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from tenants.context import tenant_context


class RequestTenant(NamedTuple):
    tenant_id: uuid.UUID
    support_session_id: uuid.UUID | None = None
    user_id: int | None = None


def principal_tenant(request: HttpRequest) -> RequestTenant | None:
    """Default resolver: the authenticated principal's own tenant."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    tenant_id = getattr(user, "tenant_id", None)
    if tenant_id is None:
        return None
    # API keys are principals too, but not users: no user id for role-based policies.
    user_id = user.pk if isinstance(user.pk, int) else None
    return RequestTenant(tenant_id, user_id=user_id)


class TenantContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        path = getattr(settings, "TENANT_CONTEXT_RESOLVER", "")
        self.resolve: Callable[[HttpRequest], RequestTenant | None] = (
            import_string(path) if path else principal_tenant
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        resolved = self.resolve(request)
        if resolved is None:
            return self.get_response(request)
        with tenant_context(
            resolved.tenant_id,
            support_session=resolved.support_session_id,
            user_id=resolved.user_id,
        ):
            return self.get_response(request)
