"""The leak detector the fuzz and load suites rely on: it must see what it is meant to see."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.reliability.leaks import IdLedger, TenantRows

pytestmark = pytest.mark.reliability

ACME, GLOBEX = str(uuid.uuid4()), str(uuid.uuid4())
ACME_DOC, GLOBEX_DOC = str(uuid.uuid4()), str(uuid.uuid4())


def ledger() -> IdLedger:
    return IdLedger(
        [
            TenantRows(ACME, "acme-1a2b", {ACME, ACME_DOC}, users={3, 4}, audit_events={10}),
            TenantRows(GLOBEX, "globex-9f8e", {GLOBEX, GLOBEX_DOC}, users={7}, audit_events={11}),
        ]
    )


def test_own_ids_are_fine() -> None:
    body = json.dumps({"id": ACME_DOC, "tenant": ACME, "client": 3, "author": 4})
    assert ledger().foreign(ACME, body) == []


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (json.dumps({"results": [{"id": GLOBEX_DOC}]}), "uuid"),
        (f"pbk_{uuid.UUID(GLOBEX).hex}_abc.def", "uuid"),  # a key embeds its tenant as hex
        (json.dumps({"title": "x", "client": 7}), "user"),
        (json.dumps({"actor_id": "7", "seq": 1}), "user"),
        (json.dumps({"id": 11, "seq": 2, "hash": "a", "prev_hash": "b"}), "audit"),
        ("<p>Globex-9F8E</p>", "slug"),
    ],
)
def test_another_tenants_ids_are_found(body: str, kind: str) -> None:
    (leak,) = ledger().foreign(ACME, body)
    assert (leak.kind, leak.owner, leak.tenant) == (kind, GLOBEX, ACME)


def test_small_integers_elsewhere_are_not_user_ids() -> None:
    body = json.dumps({"count": 7, "seq": 11, "size": 7, "progress": 11})
    assert ledger().foreign(ACME, body) == []


def test_what_the_request_carried_is_not_a_leak() -> None:
    url = f"/api/v1/documents/{GLOBEX_DOC}/"
    assert ledger().foreign(ACME, f'{{"detail": "{GLOBEX_DOC}"}}', sent=url) == []


def test_learned_ids_are_checked_against_the_database_afterwards() -> None:
    book = ledger()
    created_by_globex = str(uuid.uuid4())
    # First seen in acme's response (a leak the ledger could not know of yet): learned as
    # acme's, and found out when the database says whose row it is.
    assert book.foreign(ACME, json.dumps({"id": created_by_globex}), learn=True) == []
    assert book.foreign(GLOBEX, json.dumps({"id": created_by_globex}), learn=True) != []
    database = [
        TenantRows(ACME, "acme-1a2b", {ACME, ACME_DOC}),
        TenantRows(GLOBEX, "globex-9f8e", {GLOBEX, GLOBEX_DOC, created_by_globex}),
    ]
    (leak,) = book.cross_check(database)
    assert (leak.tenant, leak.owner, leak.value) == (ACME, GLOBEX, created_by_globex)
