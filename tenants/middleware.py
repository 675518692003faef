"""Enter the authenticated principal's tenant for the whole request (DESIGN.md invariant 4).

The tenant comes from the verified principal (the user's immutable tenant), never from the
body, query string or a header the client controls. `tenant_context` opens the request's
transaction and runs `set_config('app.current_tenant', ..., true)` in it; the view's
ATOMIC_REQUESTS block nests inside, so everything the view does sees only this tenant.
Anonymous requests and platform staff run without a tenant: raw SQL sees zero tenant rows.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from tenants.context import tenant_context


def principal_tenant_id(request: HttpRequest) -> object | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return getattr(user, "tenant_id", None)


class TenantContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant_id = principal_tenant_id(request)
        if tenant_id is None:
            return self.get_response(request)
        with tenant_context(tenant_id):  # type: ignore[arg-type]
            return self.get_response(request)
