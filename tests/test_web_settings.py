"""The organisation's settings as owners and admins change them on the web: the agent's tools,
models, instructions and review policy (/app/tools/), and the name, colour and logo
(/app/settings/, the logo served at /brand/logo). Every change is in the audit log; a
refused change says why and saves nothing. The brand colour never makes text unreadable.
"""

from __future__ import annotations

import importlib
import io
import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils.html import escape
from PIL import Image

from accounts.models import User
from agents import registry
from agents.models import PlanEntitlement, TenantEntitlement
from tenants.actions import LOGO_MAX_BYTES, set_logo
from tenants.branding import DARK_INK, LIGHT_INK, Brand, contrast_ratio, ink_on
from tenants.context import platform_context, tenant_context
from tenants.models import DEFAULT_BRAND_COLOR, Tenant
from tests.factories import World, build_world, set_plan
from tests.web import audit_events, browser, forget_redis, image_bytes, text, with_admin

pytestmark = pytest.mark.django_db

PLAN_DEFAULTS = importlib.import_module("agents.migrations.0002_plan_defaults")


@pytest.fixture(autouse=True)
def plan_defaults() -> None:
    # Platform rows shipped by a migration (a `live_db` test elsewhere may have removed them).
    with platform_context():
        for plan, kind, name, config in PLAN_DEFAULTS.ROWS:
            PlanEntitlement.objects.update_or_create(
                plan=plan, kind=kind, name=name, defaults={"config": config}
            )


@pytest.fixture
def acme() -> Iterator[World]:
    world = build_world("acme")
    yield world
    forget_redis(world)


@pytest.fixture
def ada(acme: World) -> User:
    return with_admin(acme)


def resolved(world: World) -> registry.Resolved:
    with tenant_context(world.tenant):
        return registry.resolve()


def own_rows(world: World) -> list[tuple[str, str, str, dict[str, Any]]]:
    with tenant_context(world.tenant):
        return [
            (r.kind, r.name, r.effect, r.config)
            for r in TenantEntitlement.objects.order_by("kind", "name")
        ]


def registry_changes(world: World) -> list[dict[str, Any]]:
    return [e.context for e in audit_events(world, "registry.changed")]


def change(client: Client, section: str, **form: str) -> Any:
    return client.post(reverse("app-tools-change", args=[section]), form)


def tenant_row(world: World) -> Tenant:
    return Tenant.objects.get(id=world.tenant.id)


# --------------------------------------------------------------------------- tools & models


def test_an_admin_turns_a_tool_off_and_on_again(acme: World, ada: User) -> None:
    admin = browser(ada)
    off = change(admin, "tool", name="search_playbook", enabled="0")
    assert off.status_code == 302
    assert off["Location"] == "/app/tools/#tool"
    assert "search_playbook" not in resolved(acme).tools
    page = text(admin.get(off["Location"]))
    assert "The agent can no longer use search_playbook." in page
    assert re.search(r"<code>search_playbook</code>.*?Turned off", page, flags=re.S)

    on = change(admin, "tool", name="search_playbook", enabled="1")
    assert on.status_code == 302
    assert "search_playbook" in resolved(acme).tools
    assert registry_changes(acme) == [
        {"kind": "tool", "name": "search_playbook", "effect": "revoke"},
        {"kind": "tool", "name": "search_playbook", "effect": "grant"},
    ]
    [event] = audit_events(acme, "registry.changed")[:1]
    assert event.actor_id == str(ada.pk)


def test_http_requests_need_the_address_of_the_tenants_system(acme: World, ada: User) -> None:
    set_plan(acme.tenant, Tenant.Plan.PRO)  # http_request is a Pro tool: the plan is a ceiling
    admin = browser(ada)
    refused = change(admin, "tool", name="http_request", enabled="1", url="crm.example.com")
    assert refused.status_code == 400
    assert "Give the address of your system (https://…) for HTTP requests." in text(refused)
    assert own_rows(acme) == []
    unknown = change(admin, "tool", name="shell", enabled="1")
    assert unknown.status_code == 400
    assert "Unknown tool." in text(unknown)

    saved = change(
        admin,
        "tool",
        name="http_request",
        enabled="1",
        url="https://crm.example.com/api/search",
        method="POST",
        timeout="5",
    )
    assert saved.status_code == 302
    assert resolved(acme).tools["http_request"] == {
        "url": "https://crm.example.com/api/search",
        "method": "POST",
        "timeout": 5.0,
    }
    assert "Calls POST https://crm.example.com/api/search" in text(admin.get("/app/tools/"))
    assert registry_changes(acme) == [{"kind": "tool", "name": "http_request", "effect": "grant"}]


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"temperature": "hot"}, "Temperature is a number from 0 to 2."),
        ({"temperature": "3"}, "temperature must be 0 to 2."),
        ({"temperature": "-0.1"}, "temperature must be 0 to 2."),
        ({"temperature": "nan"}, "temperature must be 0 to 2."),
        ({"name": "   "}, "Give the model a name."),
        ({"provider": "openai", "model": ""}, "Give the provider&#x27;s model id"),
        (
            {"provider": "llama"},
            "provider must be offline, openai, anthropic or openai_compatible.",
        ),
    ],
)
def test_a_model_with_a_bad_setting_is_refused_and_nothing_is_saved(
    acme: World, ada: User, form: dict[str, str], says: str
) -> None:
    fields = {"name": "house-model", "provider": "offline", "model": "house", **form}
    response = change(browser(ada), "model", **fields)
    assert response.status_code == 400
    page = text(response)
    assert says in page
    assert '<details class="card" id="model" style="margin-top: 1rem" open>' in page
    assert own_rows(acme) == []
    assert "house-model" not in resolved(acme).models
    assert registry_changes(acme) == []


def test_an_admin_adds_a_model_makes_it_the_default_and_removes_it(acme: World, ada: User) -> None:
    admin = browser(ada)
    added = change(admin, "model", name="house", provider="offline", temperature="0.7")
    assert added.status_code == 302
    assert resolved(acme).models["house"] == {"provider": "offline", "temperature": 0.7}
    assert resolved(acme).default_model == (
        "offline-extractive",
        {"provider": "offline", "default": True},
    )
    assert "Model house added." in text(admin.get("/app/tools/"))

    made = change(admin, "default-model", name="house")
    assert made.status_code == 302
    default = resolved(acme).default_model
    assert default is not None and default[0] == "house"
    assert resolved(acme).models["offline-extractive"]["default"] is False
    assert "house answers your clients from now on." in text(admin.get("/app/tools/"))

    not_there = change(admin, "default-model", name="gpt-5")
    assert not_there.status_code == 400
    assert "That model is not available to your agent." in text(not_there)
    assert resolved(acme).default_model == default

    # Back to the plan's model, then remove the added one.
    assert change(admin, "default-model", name="offline-extractive").status_code == 302
    removed = change(admin, "remove-model", name="house")
    assert removed.status_code == 302
    assert "house" not in resolved(acme).models
    assert registry_changes(acme) == [
        {"kind": "model", "name": "house", "effect": "grant"},  # added
        {"kind": "model", "name": "offline-extractive", "effect": "grant"},  # not default
        {"kind": "model", "name": "house", "effect": "grant"},  # the default
        {"kind": "model", "name": "offline-extractive", "effect": "grant"},  # default again
        {"kind": "model", "name": "house", "effect": "grant"},  # not default
        {"kind": "model", "name": "house", "effect": "deleted"},
    ]


def test_removing_a_plan_model_revokes_it(acme: World, ada: User) -> None:
    admin = browser(ada)
    assert change(admin, "model", name="house", provider="offline").status_code == 302
    assert change(admin, "default-model", name="house").status_code == 302
    assert change(admin, "remove-model", name="offline-extractive").status_code == 302
    assert set(resolved(acme).models) == {"house"}
    assert ("model", "offline-extractive", "revoke", {}) in own_rows(acme)
    assert registry_changes(acme)[-2:] == [
        {"kind": "model", "name": "offline-extractive", "effect": "deleted"},
        {"kind": "model", "name": "offline-extractive", "effect": "revoke"},
    ]


def test_an_admin_writes_the_agents_instructions_and_resets_them(acme: World, ada: User) -> None:
    admin = browser(ada)
    instructions = "Answer in two sentences. Always suggest a call for pricing questions."
    saved = change(admin, "prompt", text=f"  {instructions}\n")
    assert saved.status_code == 302
    assert resolved(acme).system_prompt == instructions
    page = text(admin.get("/app/tools/"))
    assert "The agent&#x27;s instructions were saved." in page
    assert f">{instructions}</textarea>" in page
    assert "Reset to default" in page

    too_long = change(admin, "prompt", text="x" * 8001)
    assert too_long.status_code == 400
    assert "text must be at most 8000 characters." in text(too_long)
    assert resolved(acme).system_prompt == instructions

    reset = change(admin, "prompt", text=instructions, reset="1")
    assert reset.status_code == 302
    assert resolved(acme).system_prompt == registry.DEFAULT_SYSTEM_PROMPT
    assert "Reset to default" not in text(admin.get("/app/tools/"))
    assert registry_changes(acme) == [
        {"kind": "prompt", "name": "system", "effect": "grant"},
        {"kind": "prompt", "name": "system", "effect": "deleted"},
    ]


def test_an_admin_chooses_the_review_policy(acme: World, ada: User) -> None:
    admin = browser(ada)
    saved = change(admin, "review-policy", review_policy="flagged")
    assert saved.status_code == 302
    assert saved["Location"] == "/app/tools/#review-policy"
    assert tenant_row(acme).review_policy == "flagged"
    page = text(admin.get("/app/tools/"))
    assert "Review policy saved." in page
    assert 'value="flagged" checked' in page
    [event] = audit_events(acme, "tenant.review_policy_changed")
    assert (event.actor_id, event.context) == (str(ada.pk), {"from": "review_all", "to": "flagged"})

    refused = change(admin, "review-policy", review_policy="never")
    assert refused.status_code == 400
    assert "Choose one of the options." in text(refused)
    assert tenant_row(acme).review_policy == "flagged"
    # Saving the same policy again changes nothing and records nothing.
    assert change(admin, "review-policy", review_policy="flagged").status_code == 302
    assert len(audit_events(acme, "tenant.review_policy_changed")) == 1
    unknown = change(admin, "everything", review_policy="auto_send")
    assert unknown.status_code == 400
    assert "Unknown change." in text(unknown)


def test_a_consultant_sees_the_tools_page_but_changes_nothing(acme: World) -> None:
    connor = browser(acme.consultant)
    page = text(connor.get("/app/tools/"))
    assert "owners and admins change these settings; you can see them." in page
    assert "Turn off" not in page and "Add a model" not in page
    assert "disabled" in page  # the policy radios
    refused = change(connor, "review-policy", review_policy="auto_send")
    assert refused.status_code == 403
    assert tenant_row(acme).review_policy == "review_all"
    assert own_rows(acme) == []


# --------------------------------------------------------------------------- name, colour, logo


def settings_post(client: Client, **form: Any) -> Any:
    return client.post(reverse("app-settings"), form)


def upload(name: str, data: bytes, content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def test_an_admin_renames_the_organisation_and_changes_its_colour(acme: World, ada: User) -> None:
    admin = browser(ada)
    saved = settings_post(admin, name="  Acme   Coaching ", brand_color="#FFEB3B")
    assert saved.status_code == 302
    assert saved["Location"] == "/app/settings/"
    tenant = tenant_row(acme)
    assert (tenant.name, tenant.brand_color) == ("Acme Coaching", "#ffeb3b")
    [event] = audit_events(acme, "tenant.branding_changed")
    assert event.context == {
        "name": {"from": "Acme", "to": "Acme Coaching"},
        "brand_color": {"from": DEFAULT_BRAND_COLOR, "to": "#ffeb3b"},
    }
    page = text(admin.get("/app/settings/"))
    assert "Settings saved." in page
    assert '<span class="brand-name">Acme Coaching</span>' in page
    # Yellow: dark text reads on it, and links are darkened until they read on white.
    assert f"--brand: #ffeb3b; --brand-ink: {DARK_INK};" in page
    link = Brand.of("#ffeb3b").link
    assert f"--brand-link: {link};" in page
    assert contrast_ratio(link, "#ffffff") >= 4.5
    # Her clients see the new colour in their chat too.
    assert "--brand: #ffeb3b;" in text(browser(acme.client).get("/chat/"))


@pytest.mark.parametrize(
    ("form", "field_error"),
    [
        ({"name": "Acme", "brand_color": "blue"}, "A colour like #3b5bdb."),
        ({"name": "   ", "brand_color": "#0b7285"}, "This field cannot be blank."),
    ],
)
def test_a_bad_name_or_colour_is_refused_and_nothing_changes(
    acme: World, ada: User, form: dict[str, str], field_error: str
) -> None:
    response = settings_post(browser(ada), **form)
    assert response.status_code == 400
    assert 'class="field-error"' in text(response)
    assert field_error in text(response)
    tenant = tenant_row(acme)
    assert (tenant.name, tenant.brand_color) == ("Acme", DEFAULT_BRAND_COLOR)
    assert audit_events(acme, "tenant.branding_changed") == []


@pytest.mark.parametrize(
    ("fmt", "size", "content_type"),
    [("PNG", (1024, 600), "image/png"), ("JPEG", (300, 900), "image/jpeg"), ("GIF", (40, 40), "")],
)
def test_a_logo_is_re_encoded_as_a_png_of_at_most_512_pixels(
    acme: World, ada: User, fmt: str, size: tuple[int, int], content_type: str
) -> None:
    admin = browser(ada)
    picture = image_bytes(fmt, size)
    saved = settings_post(
        admin, name="Acme", brand_color=DEFAULT_BRAND_COLOR, logo=upload("logo", picture)
    )
    assert saved.status_code == 302
    served = admin.get("/brand/logo")
    assert served.status_code == 200
    assert served["Content-Type"] == "image/png"
    assert served["Cache-Control"] == "private, max-age=86400"
    assert served["Content-Security-Policy"] == "default-src 'none'"
    with Image.open(io.BytesIO(served.content)) as logo:
        assert logo.format == "PNG"
        assert max(logo.size) == min(512, max(size))
        assert logo.size[0] / logo.size[1] == pytest.approx(size[0] / size[1], rel=0.02)
    [event] = audit_events(acme, "tenant.logo_changed")
    assert event.context == {"bytes": len(served.content)}
    page = text(admin.get("/app/settings/"))
    assert re.search(r'<img src="/brand/logo\?v=\d+" alt="">', page)  # in the top bar
    assert "Remove logo" in page


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (
            b"%PDF-1.7 not an image",
            "This file is not an image we can read (PNG, JPEG, GIF or WebP).",
        ),
        (image_bytes("PNG") + b"\0" * LOGO_MAX_BYTES, "The logo is larger than 2 MB."),
        (image_bytes("BMP", (8, 8)), "Use a PNG, JPEG, GIF or WebP image."),
        (
            image_bytes("PNG", (6000, 5000), mode="1"),
            "The image has too many pixels; use a smaller one.",
        ),
    ],
    ids=["not-an-image", "too-large", "bmp", "too-many-pixels"],
)
def test_a_bad_logo_changes_nothing_not_even_the_name_sent_with_it(
    acme: World, ada: User, data: bytes, says: str
) -> None:
    response = settings_post(
        browser(ada), name="Renamed", brand_color="#0b7285", logo=upload("logo.png", data)
    )
    assert response.status_code == 400
    page = text(response)
    assert f'<p class="field-error" id="logo-error" role="alert">{escape(says)}</p>' in page
    assert 'value="Renamed"' in page  # what she typed stays in the form
    tenant = tenant_row(acme)
    assert (tenant.name, tenant.brand_color, tenant.logo) == ("Acme", DEFAULT_BRAND_COLOR, None)
    assert audit_events(acme, "tenant.branding_changed") == []
    assert audit_events(acme, "tenant.logo_changed") == []
    assert browser(ada).get("/brand/logo").status_code == 404


def test_an_admin_removes_the_logo(acme: World, ada: User) -> None:
    admin = browser(ada)
    settings_post(
        admin, name="Acme", brand_color=DEFAULT_BRAND_COLOR, logo=upload("l", image_bytes())
    )
    assert admin.get("/brand/logo").status_code == 200
    removed = settings_post(admin, action="remove-logo")
    assert removed.status_code == 302
    assert "The logo was removed." in text(admin.get("/app/settings/"))
    assert admin.get("/brand/logo").status_code == 404
    assert len(audit_events(acme, "tenant.logo_removed")) == 1


def test_the_logo_is_served_to_the_organisations_members_only(acme: World, ada: User) -> None:
    globex = build_world("globex")
    try:
        acme_logo = image_bytes("PNG", (80, 40))
        settings_post(
            browser(ada), name="Acme", brand_color=DEFAULT_BRAND_COLOR, logo=upload("l", acme_logo)
        )
        mine = browser(ada).get("/brand/logo").content
        for member in (acme.owner, acme.consultant, acme.client):
            response = browser(member).get("/brand/logo")
            assert response.status_code == 200
            assert response.content == mine
        # Another organisation's people see their own logo, or none: never acme's.
        assert browser(globex.owner).get("/brand/logo").status_code == 404
        with tenant_context(globex.tenant):
            set_logo(acting_user=globex.owner, data=image_bytes("PNG", (10, 10)))
        theirs = browser(globex.client).get("/brand/logo")
        assert theirs.status_code == 200
        assert theirs.content != mine
        # Nobody signed in: nothing to see (not even a login redirect).
        assert Client().get("/brand/logo").status_code == 404
    finally:
        forget_redis(globex)


# --------------------------------------------------------------------------- layout and contrast


def test_the_navigation_shows_what_each_role_may_open(acme: World, ada: User) -> None:
    def nav(user: User, path: str = "/app/team/") -> list[str]:
        page = text(browser(user).get(path))
        return re.findall(r'<li><a href="(/app/[^"]*)"', page)

    team = ["/app/", "/app/conversations/", "/app/playbook/", "/app/tools/", "/app/team/"]
    admins = ["/app/usage/", "/app/credentials/", "/app/audit/", "/app/support/"]
    assert nav(acme.consultant) == team
    assert nav(ada) == [*team, *admins, "/app/settings/"]
    assert nav(acme.owner) == nav(ada)
    page = text(browser(ada).get("/app/team/"))
    assert '<a href="/app/team/" aria-current="page">Team' in page
    assert page.count('aria-current="page"') == 1


SWEEP = [
    "#" + "".join(c) for c in itertools.product(["00", "33", "66", "99", "cc", "ff"], repeat=3)
]


def test_the_ink_on_a_brand_colour_is_the_one_that_contrasts_more() -> None:
    assert ink_on("#ffffff") == DARK_INK
    assert ink_on("#000000") == LIGHT_INK
    assert ink_on("#ffeb3b") == DARK_INK  # yellow
    assert ink_on("#1e3a8a") == LIGHT_INK  # navy
    for color in SWEEP:
        ink = ink_on(color)
        other = DARK_INK if ink == LIGHT_INK else LIGHT_INK
        assert contrast_ratio(color, ink) >= contrast_ratio(color, other), color


def test_every_brand_colour_gives_readable_buttons_and_links() -> None:
    # Mid-tones such as #dd4444 reach only 4.2:1 with either ink: the buttons get a shade
    # darker, the tenant's own colour is kept for what carries no text.
    for color in [*SWEEP, DEFAULT_BRAND_COLOR, "#dd4444", "#0c8599", "#ffeb3b", "not-a-colour"]:
        brand = Brand.of(color)
        assert brand.ink == ink_on(brand.color), color
        assert contrast_ratio(brand.color, brand.ink) >= 4.5, (color, brand.color)
        assert contrast_ratio(brand.link, "#ffffff") >= 4.5, (color, brand.link)
