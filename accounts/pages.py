"""Who may open a server-rendered page: `@tenant_page(roles)` (the HTML twin of
`tenants.api.TenantScopedViewSet.roles`).

A visitor who is not signed in goes to the login page (and comes back afterwards); a signed-in
account without a tenant (platform staff) or with a role the page does not admit gets the 403
page. The tenant itself is never chosen here: the middleware has already entered the signed-in
person's own tenant, and row-level security hides every other tenant's rows, so another
tenant's object is simply not found (the 404 page, exactly as for a missing one).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache

from tenants.branding import request_role
from tenants.context import current_support_session_id, current_tenant_id

View = TypeVar("View", bound=Callable[..., HttpResponse])

NO_TENANT_MESSAGE = (
    "This account does not belong to an organisation on Playbook, so it has no pages here. "
    "Platform staff work in the support admin."
)


def login_url_for(request: HttpRequest) -> str:
    """The login page, coming back to the page the browser shows (HTMX names it)."""
    current = request.headers.get("HX-Current-URL", "")
    path = urlsplit(current)
    next_url = path.path + (f"?{path.query}" if path.query else "")
    if not next_url or not url_has_allowed_host_and_scheme(
        current, allowed_hosts={request.get_host()}
    ):
        next_url = request.get_full_path()
    return f"{resolve_url(settings.LOGIN_URL)}?{urlencode({'next': next_url}, safe='/')}"


def tenant_page(roles: frozenset[str], *, message: str = "") -> Callable[[View], View]:
    """Require a signed-in member of the current tenant whose role is in `roles`."""

    def decorate(view: View) -> View:
        @wraps(view)
        @never_cache
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if not user.is_authenticated:
                if is_htmx(request):
                    # A fragment request (a poll, a form) must not swap the login page into
                    # the page: send the whole browser to sign in, back to the page it was on.
                    response = HttpResponse(status=401)
                    response["HX-Redirect"] = login_url_for(request)
                    return response
                return redirect_to_login(request.get_full_path())
            if current_tenant_id() is None or current_support_session_id() is not None:
                raise PermissionDenied(NO_TENANT_MESSAGE)
            role = request_role(request)
            if role not in roles:
                raise PermissionDenied(
                    message or "Your role in this organisation does not include this page."
                )
            return view(request, *args, **kwargs)

        return cast(View, wrapper)

    return decorate


def is_htmx(request: HttpRequest) -> bool:
    """Whether HTMX made this request (django-htmx's `request.htmx`): such requests get a
    fragment back, the others a full page or a redirect."""
    return bool(getattr(request, "htmx", False))


def paginate(request: HttpRequest, items: Any, per_page: int) -> tuple[Page, str]:
    """The requested page of `items` (`?page=`; out of range gives the nearest page), and the
    request's other query parameters, encoded, for the pager's links."""
    page = Paginator(items, per_page).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return page, query.urlencode()
