"""Browser login through OpenID Connect, and logout."""

from __future__ import annotations

import logging
from typing import Any

import requests
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django.views.decorators.http import require_GET
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
    OIDCLogoutView,
)

from accounts.backends import oidc_setting
from accounts.oidc import InvalidToken

logger = logging.getLogger(__name__)

REFUSALS = {
    "tenant_claim_changed": (
        "This account belongs to another organisation",
        "Your identity provider now places this account in a different organisation than "
        "the one it was created in. An account never moves between organisations; ask your "
        "administrator for an account in the new one.",
    ),
    "unknown_tenant": (
        "Your organisation is not on Playbook",
        "Your sign-in worked, but it does not name an organisation that uses Playbook (or "
        "the organisation's account is not active). Ask your administrator.",
    ),
}


@require_GET
def login_page(request: HttpRequest) -> HttpResponse:
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    if request.user.is_authenticated and getattr(request.user, "tenant_id", None):
        return HttpResponseRedirect(next_url or resolve_url(settings.LOGIN_REDIRECT_URL))
    return render(
        request,
        "accounts/login.html",
        {"next": next_url, "dev_idp": settings.DEV_IDP, "configured": bool(settings.OIDC_ISSUER)},
    )


class TenantOIDCAuthenticationRequestView(OIDCAuthenticationRequestView):
    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        View.__init__(self, *args, **kwargs)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            self.OIDC_OP_AUTH_ENDPOINT = oidc_setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except (requests.RequestException, ValueError, InvalidToken):
            logger.warning("identity provider discovery failed", exc_info=True)
            self.OIDC_OP_AUTH_ENDPOINT = ""
        if not self.OIDC_OP_AUTH_ENDPOINT:
            return render(
                request,
                "accounts/login_refused.html",
                {
                    "title": "Sign-in is unavailable",
                    "message": "We cannot reach your organisation's sign-in service right now. "
                    "Please try again in a minute.",
                },
                status=503,
            )
        return super().get(request)


class TenantOIDCCallbackView(OIDCAuthenticationCallbackView):
    get_settings = staticmethod(oidc_setting)

    def login_failure(self) -> HttpResponse:
        refusal = getattr(self.request, "oidc_refusal", None)
        if refusal in REFUSALS:
            title, message = REFUSALS[refusal]
            return render(
                self.request,
                "accounts/login_refused.html",
                {"title": title, "message": message},
                status=403,
            )
        return super().login_failure()


class TenantOIDCLogoutView(OIDCLogoutView):
    get_settings = staticmethod(oidc_setting)
