"""Test data for the fault tests, written in the app's own environment:

    manage.py shell -c "from tests.reliability.fault_setup import main; main(['acme', ...])"

prints one JSON line: for each slug, a tenant (tests.factories.build_world), its client's
conversation and a signed-in session of the client (a session row, as a login leaves it).
The offline responder gets a price, so every model call costs money and the ledger has
something to add up.
"""

from __future__ import annotations

import json

from django.test import Client

from billing.models import ModelPrice, PlanLimit
from tenants.context import platform_context
from tests.factories import build_world

OFFLINE_MODEL = "offline-extractive"
PRICE = {"per_call": 1_000, "input_per_million": 2_000_000, "output_per_million": 8_000_000}


def main(slugs: list[str]) -> None:
    with platform_context():
        ModelPrice.objects.update_or_create(name=OFFLINE_MODEL, defaults=PRICE)
        # Nothing the fault tests do comes near the starter plan's limits, but make sure.
        PlanLimit.objects.filter(plan="starter").update(
            requests_per_minute=10_000, user_requests_per_minute=10_000, tokens_per_minute=0
        )
    worlds = {}
    for slug in slugs:
        world = build_world(slug)
        http = Client()
        http.force_login(world.client)
        worlds[slug] = {
            "slug": slug,
            "tenant": str(world.tenant.id),
            "client": world.client.pk,
            "conversation": str(world.conversations[0].id),
            "session": http.cookies["sessionid"].value,
        }
    print(json.dumps(worlds))
