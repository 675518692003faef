"""The local provider keeps its own sign-in, separate from Playbook's session.

Signing in at /idp/login/ sets a signed cookie that only /idp/ pages read; it never logs
anyone into Playbook. Its requests read the directory (every account) in the directory
context; `DEV_IDP` is refused in production. Playbook's session is created only by the
OIDC callback, as it would be with an external provider.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import AnonymousUser
from django.core import signing
from django.http import HttpRequest, HttpResponse

from accounts.models import User
from tenants.context import directory_context

COOKIE = "playbook_dev_idp"
SALT = "devidp.session"
MAX_AGE = 8 * 3600


def idp_user(request: HttpRequest) -> User | None:
    raw = request.COOKIES.get(COOKIE)
    if not raw:
        return None
    try:
        user_id = signing.loads(raw, salt=SALT, max_age=MAX_AGE)
    except signing.BadSignature:
        return None
    return User.objects.filter(pk=user_id, is_active=True).first()


def set_idp_cookie(response: HttpResponse, user: User) -> None:
    response.set_cookie(
        COOKIE,
        signing.dumps(user.pk, salt=SALT),
        max_age=MAX_AGE,
        httponly=True,
        samesite="Lax",
        path="/idp/",
    )


def clear_idp_cookie(response: HttpResponse) -> None:
    response.delete_cookie(COOKIE, path="/idp/", samesite="Lax")


class DevIdPSessionMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/idp/"):
            return self.get_response(request)
        # The provider's directory is every account (accounts_user is under row-level
        # security): its requests run in the directory context, which shows no tenant data.
        with directory_context():
            request.user = idp_user(request) or AnonymousUser()
            return self.get_response(request)
