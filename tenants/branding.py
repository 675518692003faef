"""The layout every page shares: the tenant's name, logo and colour, and the navigation the
signed-in person's role may use (`settings.TEMPLATES` context processor `layout`).

The brand colour is the tenant's choice; the text drawn on it is chosen here, black or white,
whichever contrasts more (WCAG 2 relative luminance), so no colour makes a button unreadable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.urls import reverse

from accounts.roles import ADMINS, CLIENT, TEAM
from tenants.context import current_tenant_id
from tenants.models import DEFAULT_BRAND_COLOR, Tenant

DARK_INK, LIGHT_INK = "#111827", "#ffffff"


def _channel(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4


def _rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    if len(color) != 6:
        color = DEFAULT_BRAND_COLOR.lstrip("#")
    try:
        return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)
    except ValueError:
        return _rgb(DEFAULT_BRAND_COLOR)


def luminance(color: str) -> float:
    r, g, b = _rgb(color)
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast_ratio(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def ink_on(color: str) -> str:
    """The text colour (near-black or white) that reads best on `color`."""
    return max((LIGHT_INK, DARK_INK), key=lambda ink: contrast_ratio(color, ink))


def shade(color: str, factor: float) -> str:
    """`color` darkened (factor < 1) or lightened towards white (factor > 1)."""
    r, g, b = _rgb(color)
    if factor <= 1:
        parts = (round(c * factor) for c in (r, g, b))
    else:
        parts = (round(c + (255 - c) * (factor - 1)) for c in (r, g, b))
    return "#" + "".join(f"{min(255, max(0, p)):02x}" for p in parts)


def link_color(color: str) -> str:
    """The brand colour, darkened until it reads as text on white (4.5:1, WCAG AA)."""
    candidate, factor = color, 1.0
    while contrast_ratio(candidate, "#ffffff") < 4.5 and factor > 0.1:
        factor -= 0.05
        candidate = shade(color, factor)
    return candidate


def readable_background(color: str) -> str:
    """`color`, darkened just enough that black or white text on it reaches 4.5:1 (WCAG AA).
    Most colours are returned unchanged; a mid-tone one (say #0c8599) gets a shade darker."""
    candidate, factor = color, 1.0
    while contrast_ratio(candidate, ink_on(candidate)) < 4.5 and factor > 0.1:
        factor -= 0.03
        candidate = shade(color, factor)
    return candidate


@dataclass(frozen=True)
class Brand:
    chosen: str  # the tenant's colour
    color: str  # what buttons and bubbles use: the chosen colour, made readable if need be
    ink: str
    hover: str
    tint: str
    link: str

    @classmethod
    def of(cls, chosen: str) -> Brand:
        color = readable_background(chosen)
        return cls(
            chosen=chosen,
            color=color,
            ink=ink_on(color),
            hover=shade(color, 0.85),
            tint=shade(chosen, 1.9),
            link=link_color(chosen),
        )

    @property
    def adjusted(self) -> bool:
        return self.color.lower() != self.chosen.lower()


@dataclass(frozen=True)
class NavItem:
    url_name: str
    label: str
    roles: frozenset[str]
    section: str  # for aria-current: the first path segment under /app/


# The consultant dashboard's sections, in order. Pages check roles themselves
# (accounts.pages.tenant_page); the navigation only hides what a role cannot open.
APP_NAV = (
    NavItem("app-queue", "Review queue", TEAM, "queue"),
    NavItem("app-conversations", "Conversations", TEAM, "conversations"),
    NavItem("app-playbook", "Playbook", TEAM, "playbook"),
    NavItem("app-tools", "Tools & models", TEAM, "tools"),
    NavItem("app-team", "Team", TEAM, "team"),
    NavItem("usage-page", "Usage", ADMINS, "usage"),
    NavItem("credentials", "Credentials", ADMINS, "credentials"),
    NavItem("audit-log", "Audit log", ADMINS, "audit"),
    NavItem("app-support", "Support access", ADMINS, "support"),
    NavItem("app-settings", "Settings", ADMINS, "settings"),
)


def request_tenant(request: HttpRequest) -> Tenant | None:
    """The signed-in member's tenant (without the logo bytes), once per request."""
    if not hasattr(request, "_layout_tenant"):
        tenant = None
        user = getattr(request, "user", None)
        tenant_id = getattr(user, "tenant_id", None) if user is not None else None
        if tenant_id is not None and getattr(user, "is_authenticated", False):
            tenant = Tenant.objects.defer("logo").filter(id=tenant_id).first()
        request._layout_tenant = tenant  # type: ignore[attr-defined]
    tenant_or_none: Tenant | None = request._layout_tenant  # type: ignore[attr-defined]
    return tenant_or_none


def request_role(request: HttpRequest) -> str | None:
    """The signed-in person's role in the current tenant context, once per request."""
    if not hasattr(request, "tenant_role"):
        from accounts.roles import principal_role

        user = getattr(request, "user", None)
        request.tenant_role = (  # type: ignore[attr-defined]
            principal_role(user) if user is not None and current_tenant_id() else None
        )
    role: str | None = request.tenant_role  # type: ignore[attr-defined]
    return role


def layout(request: HttpRequest) -> dict[str, Any]:
    """Context processor: tenant, role, brand colours and the role's navigation."""
    tenant = request_tenant(request)
    role = request_role(request) if tenant is not None else None
    brand = Brand.of(tenant.brand_color if tenant else DEFAULT_BRAND_COLOR)
    nav: list[dict[str, Any]] = []
    section = ""
    if role in TEAM:
        parts = request.path_info.strip("/").split("/")
        section = parts[1] if len(parts) > 1 and parts[0] == "app" else "queue"
        nav = [
            {
                "url": reverse(item.url_name),
                "label": item.label,
                "current": item.section == section,
                "section": item.section,
            }
            for item in APP_NAV
            if role in item.roles
        ]
    queue_waiting = 0
    if role in TEAM:
        from conversations.queue import waiting_drafts

        queue_waiting = waiting_drafts().count()
    return {
        "tenant": tenant,
        "role": role,
        "queue_waiting": queue_waiting,
        "is_team": role in TEAM,
        "is_admin": role in ADMINS,
        "is_client": role == CLIENT,
        "brand": brand,
        "app_nav": nav,
        "logo_url": (
            f"{reverse('app-logo')}?v={int(tenant.logo_updated_at.timestamp())}"
            if tenant is not None and tenant.logo_updated_at
            else ""
        ),
    }
