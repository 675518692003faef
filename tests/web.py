"""What the server-rendered pages' tests (tests/test_web_*.py) share: a signed-in browser,
HTMX requests, reading a page as a person would, the audit log, a tenant's Redis keys.

Not a test module (no tests here); each feature keeps its own module.
"""

from __future__ import annotations

import io
import re
from typing import Any

import redis
from django.conf import settings
from django.test import Client
from PIL import Image

from accounts.models import Membership, User
from audit.actions import audit_operator
from audit.models import AuditEvent
from tenants.context import tenant_context
from tests.factories import UserFactory, World

# What HTMX sends with every request it makes (django-htmx's `request.htmx`).
HTMX = {"HX-Request": "true"}

# Django masks the CSRF token differently in every response; nothing else may differ between
# two renderings of the same page for the same person.
_CSRF = re.compile(r'("X-CSRFToken": "|name="csrfmiddlewaretoken" value=")[^"]+')


def browser(user: User | None = None) -> Client:
    """A browser, signed in as `user` (a session, as after the OpenID Connect login)."""
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def text(response: Any) -> str:
    return str(response.content.decode())


def without_csrf(response: Any) -> str:
    return _CSRF.sub(r"\1…", text(response))


def login_redirect(path: str) -> str:
    """Where an anonymous visitor of `path` is sent: the login page, then back."""
    from urllib.parse import urlencode

    return f"/login/?{urlencode({'next': path}, safe='/')}"


def with_admin(world: World, first_name: str = "Ada") -> User:
    """An admin of the world's tenant (build_world makes an owner, not an admin)."""
    admin = UserFactory.create(
        username=f"{first_name.lower()}@{world.tenant.slug}.test",
        tenant=world.tenant,
        first_name=first_name,
        last_name="Admin",
    )
    with tenant_context(world.tenant):
        Membership.objects.create(user=admin, role=Membership.Role.ADMIN)
    return admin


def role_of(world: World, user: User) -> str | None:
    with tenant_context(world.tenant):
        return Membership.objects.filter(user=user).values_list("role", flat=True).first()


def audit_events(world: World, action: str) -> list[AuditEvent]:
    with tenant_context(world.tenant), audit_operator():
        return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 32), mode: str = "") -> bytes:
    """A real image made with Pillow, in the brand's blue (a 1-bit one is black)."""
    mode = mode or ("RGBA" if fmt in ("PNG", "WEBP") else "RGB")
    color = {"RGBA": (59, 91, 219, 255), "RGB": (59, 91, 219)}.get(mode, 0)
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt)
    return out.getvalue()


def forget_redis(*worlds: World) -> None:
    """Delete the worlds' keys (limiter windows, spend, cache) from the shared Redis."""
    db = redis.Redis.from_url(settings.LIMITER_REDIS_URL)
    for world in worlds:
        stale = list(db.scan_iter(match=f"*{world.tenant.id}*", count=1000))
        if stale:
            db.delete(*stale)
