"""An invitation link that does not verify shows nothing about any organisation.

Malformed, unknown, forged, expired, revoked or used: one neutral page, the same status and
the same body whatever the reason, for anonymous visitors and for people signed in to any
organisation -- the organisation the link names is never told, not even to someone who
made the link up with its id. Only a link that verifies shows who invited whom.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone

from accounts import actions
from accounts.models import Invitation, Membership
from accounts.queries import open_invitation_tenant
from tenants.context import tenant_context
from tests.factories import World, build_world
from tests.web import browser, forget_redis, text, without_csrf

pytestmark = pytest.mark.django_db

NEUTRAL = "This invitation link is not valid or has expired"


@pytest.fixture
def acme() -> Iterator[World]:
    world = build_world("acme")
    yield world
    forget_redis(world)


@pytest.fixture
def umbrella() -> Iterator[World]:
    """Organisation B, whose name and slug must never leak: 'Umbrella', 'umbrella'."""
    world = build_world("umbrella")
    yield world
    forget_redis(world)


def issue(world: World, email: str) -> str:
    """An invitation made by the world's owner; returns the path of its link."""
    with tenant_context(world.tenant, user_id=world.owner.pk):
        issued = actions.invite(
            acting_user=world.owner,
            acting_role=Membership.Role.OWNER,
            email=email,
            role=Membership.Role.CLIENT,
            site_url="",
        )
    return issued.link


# Many links from one address: the invitation page's per-address rate out of the way.
@override_settings(THROTTLE_RATES={**settings.THROTTLE_RATES, "invite": "10000/min"})
def test_a_link_that_does_not_verify_names_no_organisation(acme: World, umbrella: World) -> None:
    valid = issue(umbrella, "val@example.test")
    token = valid.removeprefix("/invite/").rstrip("/")
    secret = token.split("_", 2)[2]
    expired, revoked, used = (issue(umbrella, f"{n}@example.test") for n in ("exp", "rev", "use"))
    with tenant_context(umbrella.tenant):
        Invitation.objects.filter(email="exp@example.test").update(
            expires_at=timezone.now() - timedelta(minutes=1)
        )
        Invitation.objects.filter(email="rev@example.test").update(revoked_at=timezone.now())
        Invitation.objects.filter(email="use@example.test").update(accepted_at=timezone.now())
    hex_id = umbrella.tenant.id.hex
    links = {
        "expired": expired,
        "revoked": revoked,
        "used": used,
        "unknown secret": f"/invite/inv_{hex_id}_{'A' * 32}/",
        "made up, B's id": f"/invite/inv_{hex_id}_{uuid.uuid4().hex}/",
        "B's secret, A's id": f"/invite/inv_{acme.tenant.id.hex}_{secret}/",
        "B's secret, no tenant": f"/invite/inv_{'0' * 32}_{secret}/",
        "short secret": f"/invite/inv_{hex_id}_abc/",
        "odd-length id": f"/invite/inv_{hex_id[:-1]}_{secret}/",
        "non-hex id": f"/invite/inv_{'g' * 32}_{secret}/",
        "upper-case id": f"/invite/inv_{hex_id.upper()}_{secret}/",
        "very long": f"/invite/inv_{hex_id}_{'a' * 5000}/",
        "unicode": f"/invite/inv_{hex_id}_{'é' * 30}/",
        "no prefix": f"/invite/{hex_id}_{secret}/",
        "bare": "/invite/inv_/",
    }
    visitors = {
        "anonymous": Client(),
        "member of A": browser(acme.client),
        "owner of A": browser(acme.owner),
        "member of B": browser(umbrella.other_client),
    }
    for who, client in visitors.items():
        bodies = set()
        for reason, path in links.items():
            for response in (client.get(path), client.post(path)):
                assert response.status_code == 404, (who, reason, response.status_code)
                page = text(response)
                assert NEUTRAL in page, (who, reason)
                if who != "member of B":  # B's own people see their own organisation
                    for leak in ("Umbrella", "umbrella", hex_id):
                        assert leak not in page, (who, reason, leak)
                bodies.add(without_csrf(response))
        assert len(bodies) == 1, who  # one page, whatever the reason

    # A NUL anywhere in an address is refused before any view (tenants/inputs.py): the
    # product's 400 page, which names no organisation either.
    for path in (f"/invite/inv_{hex_id}_{secret[:10]}%00{secret[10:]}/", "/invite/%00/"):
        for who, client in visitors.items():
            response = client.get(path)
            assert response.status_code == 400, (who, path)
            if who != "member of B":  # B's own people see their own organisation
                for leak in ("Umbrella", "umbrella", hex_id):
                    assert leak not in text(response), (who, path, leak)

    # The link that verifies still works: to anyone signed out, and (named, since it is real)
    # to a member of another organisation, who is told to log out first.
    shown = Client().get(valid)
    assert shown.status_code == 200
    assert "Join Umbrella" in text(shown)
    other = browser(acme.client).get(valid)
    assert other.status_code == 403
    assert "This invitation is to join Umbrella, but you are signed in to Acme." in text(other)
    with tenant_context(umbrella.tenant):
        assert (
            not Invitation.objects.filter(accepted_at__isnull=False)
            .exclude(email="use@example.test")
            .exists()
        )


def test_the_database_check_answers_only_for_an_open_link_and_keeps_the_callers_context(
    acme: World, umbrella: World
) -> None:
    valid = issue(umbrella, "val@example.test").removeprefix("/invite/").rstrip("/")
    assert open_invitation_tenant(valid) == umbrella.tenant.id
    for bad in ("", "inv_", valid[:-1] + "\x00", valid + "x" * 200, valid.upper(), valid[:-2]):
        assert open_invitation_tenant(bad) is None
    # Signed in to A: the check answers about B's link, and A's context is as it was.
    with tenant_context(acme.tenant, user_id=acme.owner.pk):
        members = Membership.objects.count()
        assert open_invitation_tenant(valid) == umbrella.tenant.id
        assert Membership.objects.count() == members == 4
        assert not Invitation.objects.exists()  # B's invitations stay invisible
        with connection.cursor() as cursor:
            # Called directly, as any SQL in A's request could: a guess answers nothing.
            cursor.execute(
                "SELECT public.playbook_open_invitation(%s)",
                [f"inv_{umbrella.tenant.id.hex}_{'B' * 32}"],
            )
            assert cursor.fetchone() == (None,)
            cursor.execute("SELECT count(*) FROM public.accounts_membership")
            assert cursor.fetchone() == (4,)
