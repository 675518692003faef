"""Content-Security-Policy header for every response (settings.CONTENT_SECURITY_POLICY).

Pages use same-origin scripts and stylesheets only; `style-src` allows 'unsafe-inline'
because server-rendered pages and the Django admin use `style=` attributes (no inline
script is allowed anywhere). The API docs page serves Swagger UI from our own static files
(drf-spectacular-sidecar) and loads its init script from a URL (SpectacularSwaggerSplitView),
so it fits the same policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def build_policy(directives: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(f"{name} {' '.join(sources)}".strip() for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    """Adds the policy unless the view set its own header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        directives = getattr(settings, "CONTENT_SECURITY_POLICY", None) or {}
        self.policy = build_policy(directives)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self.policy and HEADER not in response:
            response[HEADER] = self.policy
        return response
