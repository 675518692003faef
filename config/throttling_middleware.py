"""Per client address: the anonymous pages and the API requests without a verified
credential, counted before the tenant is entered (config.throttling has the counting).

Its own module: it answers in the API's JSON error shape (config.api_errors), which imports
DRF's views, and DRF's views import config.throttling while they are being defined.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

from config.api_errors import error_body, rate_limited_message
from config.client_ip import client_network
from config.throttling import count_request

# Anonymous pages counted per client address, by path prefix: (prefix, scope).
PAGE_SCOPES: tuple[tuple[str, str], ...] = (
    ("/login/", "login"),
    ("/oidc/", "login"),  # the OpenID Connect start and callback
    ("/admin/login/", "login"),
    ("/admin/enroll/", "login"),
    ("/invite/", "invite"),
    ("/idp/", "dev_idp"),
)
API_PREFIX = "/api/"


def refused(request: HttpRequest, retry_after: int) -> HttpResponse:
    response: HttpResponse
    if request.path_info.startswith(API_PREFIX):
        response = JsonResponse(
            error_body("rate_limited", rate_limited_message(retry_after)), status=429
        )
    else:
        # Rendered without the request: no tenant is entered yet, so nothing may query.
        page = loader.render_to_string(
            "throttled.html", {"message": rate_limited_message(retry_after)}
        )
        response = HttpResponse(page, status=429)
    response["Retry-After"] = str(retry_after)
    return response


class AnonymousRateMiddleware:
    """Per client address: PAGE_SCOPES, and API requests without a verified credential
    (after BearerAuthenticationMiddleware, which decides that)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        scope = self.scope_of(request)
        if scope is not None:
            retry_after = count_request(scope, client_network(request))
            if retry_after is not None:
                return refused(request, retry_after)
        return self.get_response(request)

    @staticmethod
    def scope_of(request: HttpRequest) -> str | None:
        path = request.path_info
        if path.startswith(API_PREFIX):
            return None if request.user.is_authenticated else "api_anonymous"
        return next((scope for prefix, scope in PAGE_SCOPES if path.startswith(prefix)), None)
