"""The audit log: append-only for every role, hash-chained per tenant, readable only by the
tenant's owners and admins (and support inside a support session), exported as signed JSON
Lines that a stdlib-only script verifies, and written in the same transaction as the work
it records. Everything runs against the real PostgreSQL as the runtime role.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.db.utils import ProgrammingError
from django.http import StreamingHttpResponse
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey, Membership, SupportSession, User
from audit import signing
from audit.actions import audit_operator, record_audit_event
from audit.context import RequestInfo, reset_request_info, set_request_info
from audit.export import checkpoint_message, create_checkpoint, iter_events, verify_tenant_log
from audit.models import AuditCheckpoint, AuditEvent
from audit.payload import REDACTED, redact
from audit.tasks import checkpoint_tenant
from audit.verify_export import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    ed25519_verify,
    event_document,
    verify_chain,
)
from conversations.api import ConversationSerializer
from conversations.models import Conversation
from tenants.context import Principal, TenantContextRefused, TenantScopeError, tenant_context
from tests import celery_probe
from tests.factories import TenantFactory, UserFactory, World, build_world

OwnerSQL = Callable[..., list[tuple[Any, ...]]]

BASE_DIR = Path(settings.BASE_DIR)
CLEAN_PATH = "/usr/bin:/bin"
RECORD_SQL = (
    "SELECT event_id, event_seq, event_hash FROM audit_record_event("
    "%s, %s, %s, %s, %s, %s, %s, %s, %s::inet, %s, %s, %s)"
)
REASON = "Ticket 4711: the client cannot see her last conversation"
# Quotes, backslash, control characters, emoji, a JSON-vs-JavaScript line separator,
# non-ASCII and a slash: the SQL-built canonical JSON must equal Python's for all of them.
TRICKY = "q\"uo'te \\ back\\\\slash\nnew\r\x01\x1f\t 😀 \u2028\u2029 é ß 中文 </script> \x7f"
TRICKY_ID = 'r"\\\n\x01😀\u2028é'


# --------------------------------------------------------------------------- helpers


def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Raw SQL on the Django connection: the runtime role."""
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def chain(world: World) -> list[dict[str, Any]]:
    """The tenant's events in chain order, as hashed and exported (operator read)."""
    with tenant_context(world.tenant), audit_operator():
        return list(iter_events())


def events(world: World, **filters: Any) -> list[AuditEvent]:
    with tenant_context(world.tenant), audit_operator():
        return list(AuditEvent.objects.filter(**filters).order_by("seq"))


def raw_record(action: str, *, context: str = "{}") -> tuple[Any, ...]:
    return sql(RECORD_SQL, ["system", "", "raw", action, "", "", "", "", None, "", "", context])[0]


def raw_event_ids() -> set[int]:
    return {row[0] for row in sql("SELECT id FROM audit_auditevent")}


def assert_chain_intact(rows: list[dict[str, Any]], tenant_id: str) -> None:
    assert rows, "the chain is empty"
    assert [e["seq"] for e in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["prev_hash"] == GENESIS_HASH == "0" * 64
    prev = GENESIS_HASH
    for event in rows:
        assert event["tenant_id"] == tenant_id
        assert event["prev_hash"] == prev, f"seq {event['seq']} does not link"
        assert event["hash"] == chain_hash(prev, event_document(event)), event["seq"]
        prev = event["hash"]


def verify_command(world: World) -> str:
    out = StringIO()
    call_command("audit_verify", "--tenant", world.tenant.slug, stdout=out, stderr=StringIO())
    return out.getvalue()


def logged_in(user: User, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def make_staff() -> User:
    return UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)


def make_support_session(world: World, staff: User, **fields: Any) -> SupportSession:
    with tenant_context(world.tenant):
        session: SupportSession = SupportSession.objects.create(
            staff=staff, reason=REASON, **fields
        )
        return session


def record_support_view(world: World, staff: User, session: SupportSession) -> None:
    with tenant_context(world.tenant, support_session=session.id):
        record_audit_event(
            "support.viewed",
            actor=staff,
            resource_type="conversations.conversation",
            context={"view": "list"},
        )


AUDIT_TABLES = ("audit_auditevent", "audit_chain_heads")


def as_owner_in(owner_sql: OwnerSQL, world: World) -> None:
    """The owner role, as an attacker who holds it would: it owns the audit tables, so it
    lifts FORCE ROW LEVEL SECURITY and sees every row (the owner role is outside the
    database boundary; the append-only trigger and the signed checkpoints are what remain)."""
    for table in AUDIT_TABLES:
        owner_sql(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    assert owner_sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [(False,)]


@pytest.fixture(autouse=True)
def audit_tables_forced_again(owner_sql: OwnerSQL) -> Iterator[None]:
    yield
    for table in AUDIT_TABLES:
        owner_sql(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")


@contextmanager
def append_only_trigger_disabled(owner_sql: OwnerSQL) -> Iterator[None]:
    owner_sql("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_append_only")
    try:
        yield
    finally:
        owner_sql("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_append_only")


@pytest.fixture
def acme(db: None) -> World:
    return build_world("acme", conversation_title="Acme onboarding")


@pytest.fixture
def globex(db: None) -> World:
    return build_world("globex", conversation_title="Globex pricing")


# --------------------------------------------------------------------------- 1. writing


DIRECT_WRITES = {
    "insert": (
        "INSERT INTO audit_auditevent (tenant_id, seq, created_at, actor_type, actor_id, "
        "actor_label, action, resource_type, resource_id, request_id, agent_run_id, ip, "
        "user_agent, payload_sha256, context, prev_hash, hash) VALUES (%(tenant)s, 999, now(), "
        "'system', '', 'forger', 'forged', '', '', '', '', NULL, '', '', '{}', %(zeros)s, "
        "%(zeros)s)"
    ),
    "update": "UPDATE audit_auditevent SET action = 'forged'",
    "delete": "DELETE FROM audit_auditevent",
    "truncate": "TRUNCATE audit_auditevent",
    "forge-chain-head": "UPDATE audit_chain_heads SET seq = 0, hash = %(zeros)s",
}


@pytest.mark.parametrize("statement", DIRECT_WRITES)
def test_the_runtime_role_cannot_write_the_log_directly(acme: World, statement: str) -> None:
    before = chain(acme)
    assert len(before) == 4  # two conversations and two messages
    with tenant_context(acme.tenant, user_id=acme.owner.pk), audit_operator():
        # It can read its tenant's log here, so a refusal is not just "no rows".
        assert raw_event_ids() == {e["id"] for e in before}
        with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
            sql(DIRECT_WRITES[statement], {"tenant": acme.tenant.id, "zeros": GENESIS_HASH})
    assert chain(acme) == before


def test_the_runtime_role_writes_through_the_function_into_its_own_tenant_only(
    acme: World, globex: World
) -> None:
    acme_before, globex_before = chain(acme), chain(globex)
    with tenant_context(acme.tenant):
        event_id, seq, digest = raw_record("test.through_the_function")
    acme_after = chain(acme)
    assert chain(globex) == globex_before
    assert acme_after[:-1] == acme_before
    new = acme_after[-1]
    assert (new["id"], new["seq"], new["hash"]) == (event_id, seq, digest)
    assert new["action"] == "test.through_the_function"
    assert new["tenant_id"] == str(acme.tenant.id)
    assert (new["seq"], new["prev_hash"]) == (acme_before[-1]["seq"] + 1, acme_before[-1]["hash"])
    # The caller cannot name a tenant: the function takes it from the session setting only.
    ((names, definer),) = sql(
        "SELECT proargnames, prosecdef FROM pg_proc WHERE proname = 'audit_record_event'"
    )
    assert definer is True
    assert not [name for name in names if "tenant" in name]


def test_the_function_refuses_to_write_outside_a_tenant_context(acme: World) -> None:
    before = chain(acme)
    with (
        pytest.raises(ProgrammingError, match="needs a verified tenant context"),
        transaction.atomic(),
    ):
        raw_record("test.no_tenant")
    with pytest.raises(TenantScopeError):
        record_audit_event("test.no_tenant")
    assert chain(acme) == before


def test_a_tenant_never_reads_another_tenants_events(acme: World, globex: World) -> None:
    globex_ids = {e["id"] for e in chain(globex)}
    assert globex_ids
    with tenant_context(acme.tenant), audit_operator():
        assert sql("SELECT DISTINCT tenant_id::text FROM audit_auditevent") == [
            (str(acme.tenant.id),)
        ]
        assert not raw_event_ids() & globex_ids
        assert sql(
            "SELECT count(*) FROM audit_auditevent WHERE tenant_id = %s", [globex.tenant.id]
        ) == [(0,)]
        assert not AuditEvent.all_tenants.filter(tenant_id=globex.tenant.id).exists()
        assert sql("SELECT tenant_id FROM audit_chain_heads") == [(acme.tenant.id,)]


# --------------------------------------------------------------------------- 2. reading


@pytest.mark.parametrize(
    ("who", "reads"),
    [
        ("client", False),
        ("other_client", False),
        ("consultant", False),
        ("nobody", False),
        ("globex-owner", False),
        ("admin", True),
        ("owner", True),
    ],
)
def test_reading_the_log_needs_an_owner_or_admin(
    acme: World, globex: World, who: str, reads: bool
) -> None:
    expected = {e["id"] for e in chain(acme)}
    user_id: int | None
    if who == "nobody":
        user_id = None
    elif who == "globex-owner":
        user_id = globex.owner.pk  # an owner, but of another tenant
    elif who == "admin":
        admin = UserFactory.create(username="ada@acme.test", tenant=acme.tenant)
        with tenant_context(acme.tenant):
            Membership.objects.create(user=admin, role=Membership.Role.ADMIN)
        user_id = admin.pk
    else:
        user_id = getattr(acme, who).pk
    if who == "globex-owner":
        # The database does not even let another tenant's owner into acme.
        with pytest.raises(TenantContextRefused), tenant_context(acme.tenant, user_id=user_id):
            pass
        return
    with tenant_context(acme.tenant, user_id=user_id):
        seen = raw_event_ids()
        orm = set(AuditEvent.objects.values_list("id", flat=True))
    assert seen == orm == (expected if reads else set())


def test_operators_and_support_sessions_read_the_log(acme: World, globex: World) -> None:
    expected = {e["id"] for e in chain(acme)}
    assert len(expected) == 4
    with tenant_context(acme.tenant), audit_operator():
        assert raw_event_ids() == expected
    # The operator setting ends with the block.
    with tenant_context(acme.tenant):
        assert raw_event_ids() == set()

    staff = make_staff()
    session = make_support_session(acme, staff)
    with tenant_context(acme.tenant, support_session=session.id):
        assert raw_event_ids() == expected
    expired = make_support_session(acme, staff, expires_at=timezone.now() - timedelta(minutes=1))
    with (
        pytest.raises(TenantContextRefused),
        tenant_context(acme.tenant, support_session=expired.id),
    ):
        pass


# --------------------------------------------------------------------------- 3. append-only


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET action = 'rewritten'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ],
    ids=["update", "delete", "truncate"],
)
def test_the_owner_role_cannot_change_events_either(
    live_db: None, owner_sql: OwnerSQL, statement: str
) -> None:
    acme = build_world("acme")
    as_owner_in(owner_sql, acme)
    snapshot = "SELECT id, seq, action, hash FROM audit_auditevent ORDER BY seq"
    before = owner_sql(snapshot)
    assert len(before) == 4  # the owner sees the rows, so the trigger is what refuses
    verb = statement.split()[0]
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=f"append-only \\({verb} refused\\)"
    ):
        owner_sql(statement)
    assert owner_sql(snapshot) == before
    assert verify_command(acme).startswith("The audit log of acme is intact: 4 events")


# --------------------------------------------------------------------------- 4. chains


def test_each_tenant_has_its_own_unbroken_chain(acme: World, globex: World) -> None:
    for n in range(3):
        for world in (acme, globex):
            with tenant_context(world.tenant):
                record_audit_event(f"test.step_{n}", actor=world.owner, resource_id=n)
    for world in (acme, globex):
        rows = chain(world)
        assert len(rows) == 7
        assert_chain_intact(rows, str(world.tenant.id))
        with tenant_context(world.tenant):
            assert sql("SELECT seq, hash FROM audit_chain_heads") == [(7, rows[-1]["hash"])]
        assert f"The audit log of {world.tenant.slug} is intact: 7 events" in verify_command(world)
    assert {e["hash"] for e in chain(acme)}.isdisjoint({e["hash"] for e in chain(globex)})


@dataclass
class OddActor:
    pk: str
    label: str
    is_authenticated: bool = True
    actor_type: str = AuditEvent.ActorType.AGENT

    def __str__(self) -> str:
        return self.label


def test_tricky_strings_hash_the_same_in_sql_and_python(acme: World) -> None:
    context = {
        TRICKY: TRICKY,
        "list": [TRICKY, 1, True, None, -7, 2**60],
        "nested": {"é": "\u2028", 'a"b': "\\", "z": {}, "A": []},
        "password": "hunter2",
    }
    token = set_request_info(
        RequestInfo(request_id="req-" + TRICKY_ID, ip="2001:db8::1", user_agent=TRICKY)
    )
    try:
        with tenant_context(acme.tenant):
            recorded = record_audit_event(
                "test.tricky",
                actor=OddActor(pk="agent-😀", label=TRICKY),
                resource_type="conversation",
                resource_id=TRICKY_ID,
                agent_run_id=TRICKY_ID,
                context=context,
            )
    finally:
        reset_request_info(token)
    rows = chain(acme)
    assert_chain_intact(rows, str(acme.tenant.id))
    event = rows[-1]
    assert event["hash"] == recorded.hash
    # Round trip: stored exactly as given (secrets redacted from the context).
    assert event["actor_label"] == event["user_agent"] == TRICKY
    assert event["resource_id"] == event["agent_run_id"] == TRICKY_ID
    assert event["request_id"] == "req-" + TRICKY_ID
    assert event["ip"] == "2001:db8::1"
    assert event["actor_type"] == "agent"
    assert event["context"] == {**context, "password": REDACTED}
    assert "😀" in event_document(event) and "\\u0001" in event_document(event)
    assert verify_command(acme).startswith("The audit log of acme is intact: 5 events")


# --------------------------------------------------------------------------- 5. tamper detection


def _extend(world: World, count: int) -> list[dict[str, Any]]:
    with tenant_context(world.tenant):
        for n in range(count):
            record_audit_event(f"test.extra_{n}", actor=world.owner)
    rows = chain(world)
    assert_chain_intact(rows, str(world.tenant.id))
    return rows


def test_an_altered_event_is_named_by_audit_verify(live_db: None, owner_sql: OwnerSQL) -> None:
    acme, globex = build_world("acme"), build_world("globex")
    rows = _extend(acme, 2)
    assert len(rows) == 6
    verify_command(acme)
    as_owner_in(owner_sql, acme)
    with append_only_trigger_disabled(owner_sql):
        owner_sql(
            "UPDATE audit_auditevent SET action = 'conversation.deleted' WHERE id = %s",
            [rows[2]["id"]],
        )
    with pytest.raises(CommandError, match=r"NOT intact: event seq 3 .*altered"):
        verify_command(acme)
    # Only that tenant's log is affected.
    assert "intact: 4 events" in verify_command(globex)


def test_removing_the_newest_event_contradicts_the_signed_checkpoint(
    live_db: None, owner_sql: OwnerSQL
) -> None:
    acme = build_world("acme")
    rows = _extend(acme, 2)
    with tenant_context(acme.tenant):
        checkpoint = create_checkpoint()
    assert checkpoint is not None and (checkpoint.seq, checkpoint.hash) == (6, rows[-1]["hash"])
    verify_command(acme)

    as_owner_in(owner_sql, acme)
    with append_only_trigger_disabled(owner_sql):
        owner_sql("DELETE FROM audit_auditevent WHERE id = %s", [rows[-1]["id"]])
    with pytest.raises(CommandError, match="recorded head is seq 6"):
        verify_command(acme)

    # "Without the key": move the head back too. The chain is consistent again...
    owner_sql(
        "UPDATE audit_chain_heads SET seq = %s, hash = %s WHERE tenant_id = %s",
        [5, rows[-2]["hash"], acme.tenant.id],
    )
    problem, count, _ = verify_chain(chain(acme))
    assert (problem, count) == (None, 5)
    # ...but the signed checkpoint remembers seq 6.
    with pytest.raises(CommandError, match="event seq 6 is missing but was signed in a checkpoint"):
        verify_command(acme)


def test_a_rehashed_rewrite_contradicts_the_signed_checkpoint(
    live_db: None, owner_sql: OwnerSQL
) -> None:
    acme = build_world("acme")
    rows = _extend(acme, 3)
    with tenant_context(acme.tenant):
        checkpoint = create_checkpoint()
    assert checkpoint is not None and checkpoint.seq == len(rows) == 7

    # Rewrite seq 3 and re-hash it and every later event, as someone with the table but
    # without the signing key would.
    forged = [dict(e) for e in rows]
    forged[2]["action"] = "conversation.deleted"
    prev = forged[1]["hash"]
    for event in forged[2:]:
        event["prev_hash"] = prev
        event["hash"] = prev = chain_hash(prev, event_document(event))
    as_owner_in(owner_sql, acme)
    with append_only_trigger_disabled(owner_sql):
        owner_sql(
            "UPDATE audit_auditevent SET action = %s WHERE id = %s",
            [forged[2]["action"], forged[2]["id"]],
        )
        for event in forged[2:]:
            owner_sql(
                "UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
                [event["prev_hash"], event["hash"], event["id"]],
            )
    owner_sql("UPDATE audit_chain_heads SET hash = %s WHERE tenant_id = %s", [prev, acme.tenant.id])

    stored = chain(acme)
    assert stored == forged
    assert verify_chain(stored) == (None, 7, prev)  # internally consistent
    with tenant_context(acme.tenant), audit_operator():
        result = verify_tenant_log()
    assert not result.ok
    assert result.problems == [
        f"event seq 7 (id {rows[-1]['id']}) differs from its signed checkpoint: "
        "the log was rewritten at or before this event"
    ]
    with pytest.raises(CommandError, match=r"event seq 7 .*differs from its signed checkpoint"):
        verify_command(acme)


# --------------------------------------------------------------------------- 6. export


@pytest.fixture(scope="session")
def verifier_python() -> list[str]:
    """A Python without the project's virtualenv or Django: the tenant's own machine."""
    found = shutil.which("python3", path=CLEAN_PATH)
    candidates = [[found]] if found else []
    candidates.append([sys.executable, "-I", "-S"])
    probe = (
        "import importlib.util, sys; "
        "print(sys.version_info >= (3, 11) and importlib.util.find_spec('django') is None)"
    )
    for command in candidates:
        checked = subprocess.run(
            [*command, "-c", probe],
            env={"PATH": CLEAN_PATH},
            capture_output=True,
            text=True,
            check=False,
        )
        if checked.stdout.strip() == "True":
            return command
    pytest.fail("no Python 3.11+ without Django to run audit/verify_export.py with")


@dataclass
class Verdict:
    code: int
    out: str


@pytest.fixture
def verify_file(verifier_python: list[str], tmp_path: Path) -> Callable[[bytes], Verdict]:
    key = tmp_path / "playbook-audit-key.json"
    key.write_bytes(Client().get("/.well-known/playbook-audit-key").content)

    def run(export: bytes) -> Verdict:
        path = tmp_path / f"audit-{hashlib.sha256(export).hexdigest()[:12]}.jsonl"
        path.write_bytes(export)
        done = subprocess.run(
            [*verifier_python, "audit/verify_export.py", str(path), "--public-key", str(key)],
            cwd=BASE_DIR,
            env={"PATH": CLEAN_PATH},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Verdict(done.returncode, done.stdout + done.stderr)

    return run


def export_as(client: Client, **query: str) -> bytes:
    response = client.get("/api/v1/audit/export", query)
    assert response.status_code == 200, getattr(response, "content", b"")
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Cache-Control"] == "no-store"
    return b"".join(cast(Iterator[bytes], response.streaming_content))


def parse_export(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records = [json.loads(line) for line in data.splitlines()]
    *lines, last = records
    assert list(last) == ["manifest"]
    return lines, last["manifest"]


def test_the_public_key_is_published(db: None) -> None:
    response = Client().get("/.well-known/playbook-audit-key")
    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert (key["kty"], key["crv"], key["kid"]) == ("OKP", "Ed25519", signing.key_id())
    raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    assert raw == signing.public_bytes()


def test_an_owner_exports_a_signed_log_that_verifies_offline(
    acme: World, globex: World, verify_file: Callable[[bytes], Verdict]
) -> None:
    data = export_as(logged_in(acme.owner))
    lines, manifest = parse_export(data)

    # Every event of acme, the export itself included, and nothing of globex.
    assert [e["seq"] for e in lines] == list(range(1, 6))
    assert {e["tenant_id"] for e in lines} == {str(acme.tenant.id)}
    assert not {e["hash"] for e in lines} & {e["hash"] for e in chain(globex)}
    exported = lines[-1]
    assert (exported["action"], exported["actor_id"]) == ("audit.exported", str(acme.owner.pk))
    assert exported["context"] == {"from": "", "to": ""}
    assert lines == chain(acme)
    assert (manifest["count"], manifest["first_seq"], manifest["last_seq"]) == (5, 1, 5)
    assert manifest["prev_hash"] == GENESIS_HASH
    assert manifest["last_hash"] == exported["hash"]
    assert manifest["tenant_id"] == str(acme.tenant.id)
    # The export signed a checkpoint of the head it exported.
    with tenant_context(acme.tenant):
        assert list(AuditCheckpoint.objects.values_list("seq", "hash")) == [(5, exported["hash"])]

    valid = verify_file(data)
    assert (valid.code, valid.out.splitlines()[0]) == (
        0,
        "VALID: signature, file and hash chain check out",
    )

    edited = data.replace(b'"action":"message.posted"', b'"action":"message.deleted"', 1)
    assert edited != data
    bad = verify_file(edited)
    assert bad.code == 1
    assert "INVALID" in bad.out
    assert "the lines are not the ones the manifest signed (file edited)" in bad.out
    assert "content does not match its hash (altered)" in bad.out

    truncated = b"".join(data.splitlines(keepends=True)[:-1])
    cut = verify_file(truncated)
    assert (cut.code, "the export is truncated" in cut.out) == (1, True)

    forged_manifest = data.replace(b'"count":5', b'"count":4', 1)
    assert forged_manifest != data
    forged = verify_file(forged_manifest)
    assert forged.code == 1
    assert "signature does not verify" in forged.out


def test_a_date_range_exports_a_partial_chain_that_verifies(
    acme: World, verify_file: Callable[[bytes], Verdict]
) -> None:
    rows = _extend(acme, 4)
    start, end = rows[2]["created_at"], rows[6]["created_at"]
    data = export_as(logged_in(acme.owner), **{"from": start, "to": end})
    lines, manifest = parse_export(data)
    assert [e["seq"] for e in lines] == [3, 4, 5, 6]
    assert lines == rows[2:6]
    assert manifest["prev_hash"] == rows[2]["prev_hash"] != GENESIS_HASH
    assert (manifest["first_seq"], manifest["last_seq"], manifest["count"]) == (3, 6, 4)
    assert verify_file(data).code == 0

    exported = events(acme, action="audit.exported")
    assert len(exported) == 1
    assert exported[0].context["from"].startswith(start[:19])
    assert exported[0].context["to"].startswith(end[:19])

    # A range with nothing in it is still a signed, valid file.
    empty = export_as(
        logged_in(acme.owner),
        **{"from": "2001-01-01T00:00:00Z", "to": start[:4] + "-01-01T00:00:00Z"},
    )
    assert parse_export(empty)[1]["count"] == 0
    assert verify_file(empty).code == 0


def test_the_export_command_writes_a_file_that_verifies(
    acme: World, tmp_path: Path, verify_file: Callable[[bytes], Verdict]
) -> None:
    out = tmp_path / "acme.jsonl"
    call_command("audit_export", "--tenant", "acme", "--out", str(out), stderr=StringIO())
    data = out.read_bytes()
    lines, manifest = parse_export(data)
    assert [e["action"] for e in lines][-1] == "audit.exported"
    assert lines[-1]["context"]["by"] == "manage.py audit_export"
    assert lines[-1]["actor_type"] == "system"
    assert manifest["count"] == 5
    assert verify_file(data).code == 0


def test_only_owners_and_admins_export(acme: World, globex: World) -> None:
    for user in (acme.consultant, acme.client):
        response = logged_in(user).get("/api/v1/audit/export")
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
    assert Client().get("/api/v1/audit/export").status_code in (401, 403)
    assert events(acme, action="audit.exported") == []
    # globex's owner exports globex only.
    lines, manifest = parse_export(export_as(logged_in(globex.owner)))
    assert manifest["tenant_id"] == str(globex.tenant.id)
    assert {e["tenant_id"] for e in lines} == {str(globex.tenant.id)}
    assert not {e["id"] for e in lines} & {e["id"] for e in chain(acme)}


# --------------------------------------------------------------------------- 7. concurrency


def test_concurrent_writers_keep_two_unbroken_chains(live_db: None) -> None:
    tenants = [TenantFactory.create(slug="acme"), TenantFactory.create(slug="globex")]
    threads_count, per_thread = 8, 125
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        tenant = tenants[number % 2]
        try:
            barrier.wait(timeout=60)
            for i in range(per_thread):
                with tenant_context(tenant):
                    record_audit_event(
                        "test.concurrent",
                        actor_type="system",
                        resource_type="thread",
                        resource_id=f"thread-{number}",
                        context={"i": i},
                    )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    for parity, tenant in enumerate(tenants):
        with tenant_context(tenant), audit_operator():
            result = verify_tenant_log()
            rows = list(iter_events())
            head = sql("SELECT seq, hash FROM audit_chain_heads")
        assert result.ok, result.problems
        assert result.count == len(rows) == 500
        assert [e["seq"] for e in rows] == list(range(1, 501))
        assert head == [(500, rows[-1]["hash"])]
        by_thread = Counter(e["resource_id"] for e in rows)
        assert by_thread == {f"thread-{n}": per_thread for n in range(parity, threads_count, 2)}
        for n in range(parity, threads_count, 2):
            order = [e["context"]["i"] for e in rows if e["resource_id"] == f"thread-{n}"]
            assert order == list(range(per_thread))


# --------------------------------------------------------------------------- 8. transactions


def test_a_request_that_fails_after_writing_leaves_no_event(
    acme: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_before_failure: list[bool] = []

    def explode(self: ConversationSerializer, instance: Conversation) -> Any:
        with audit_operator():
            written_before_failure.append(
                AuditEvent.objects.filter(
                    action="conversation.created", resource_id=str(instance.id)
                ).exists()
            )
        raise RuntimeError("the response failed after the conversation was created")

    monkeypatch.setattr(ConversationSerializer, "to_representation", explode)
    before = events(acme)
    client = logged_in(acme.client, raise_request_exception=False)
    response = client.post(
        "/api/v1/conversations/", {"title": "Doomed"}, content_type="application/json"
    )
    assert response.status_code == 500
    assert written_before_failure == [True]
    with tenant_context(acme.tenant):
        assert not Conversation.objects.filter(title="Doomed").exists()
    assert events(acme) == before


def test_a_successful_request_leaves_one_event_with_its_request_id_and_payload_hash(
    acme: World,
) -> None:
    body = {"title": "Pricing review"}
    response = logged_in(acme.client).post(
        "/api/v1/conversations/",
        body,
        content_type="application/json",
        HTTP_X_REQUEST_ID="req-audit-0001",
    )
    assert response.status_code == 201, response.content
    assert response["X-Request-ID"] == "req-audit-0001"
    of_request = events(acme, request_id="req-audit-0001")
    assert len(of_request) == 1
    event = of_request[0]
    assert (event.action, event.resource_type, event.resource_id) == (
        "conversation.created",
        "conversation",
        response.json()["id"],
    )
    assert (event.actor_type, event.actor_id) == ("user", str(acme.client.pk))
    assert event.ip == "127.0.0.1"
    assert event.payload_sha256 == hashlib.sha256(canonical_json(body).encode()).hexdigest()
    assert len(events(acme, action="conversation.created")) == 3


def test_secrets_in_a_payload_are_redacted_before_hashing(acme: World) -> None:
    body = {"title": "Key rotation", "password": "hunter2", "api_key": "pbk_live_123"}
    redacted = redact(body)
    assert redacted == {"title": "Key rotation", "password": REDACTED, "api_key": REDACTED}
    expected = hashlib.sha256(canonical_json(redacted).encode()).hexdigest()
    unredacted = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    assert expected != unredacted

    response = logged_in(acme.client).post(
        "/api/v1/conversations/", body, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    (event,) = events(acme, action="conversation.created", resource_id=response.json()["id"])
    assert event.payload_sha256 == expected

    payload = {"nested": [{"API-Key": "k", "keep": 1}], "passphrase": "p", "note": "ok"}
    with tenant_context(acme.tenant):
        recorded = record_audit_event("test.payload", payload=payload)
    (direct,) = events(acme, id=recorded.id)
    assert (
        direct.payload_sha256
        == hashlib.sha256(
            canonical_json(
                {"nested": [{"API-Key": REDACTED, "keep": 1}], "passphrase": REDACTED, "note": "ok"}
            ).encode()
        ).hexdigest()
    )
    assert direct.payload_sha256 != hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# --------------------------------------------------------------------------- 9. events API and page


@pytest.fixture
def busy_acme(acme: World) -> tuple[World, list[dict[str, Any]]]:
    """acme's 4 events, then: system, API key, support (through a session), system."""
    with tenant_context(acme.tenant):
        record_audit_event("test.system_sweep")
        key = ApiKey.objects.create(name="partner", prefix="pbkbusy1", key_hash="0" * 64)
    with tenant_context(acme.tenant, principal=Principal.api_key(key.id)):
        record_audit_event("apikey.used", resource_type="api_key")
    staff = make_staff()
    record_support_view(acme, staff, make_support_session(acme, staff))
    with tenant_context(acme.tenant, user_id=acme.owner.pk):
        record_audit_event("test.after_support")
    rows = chain(acme)
    assert [e["actor_type"] for e in rows] == [
        "user", "user", "user", "user", "system", "api_key", "support", "user",
    ]  # fmt: skip
    return acme, rows


def listed(client: Client, **query: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/audit/events/", query)
    assert response.status_code == 200, response.content
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_the_events_api_lists_newest_first_with_cursor_pages(
    busy_acme: tuple[World, list[dict[str, Any]]], globex: World
) -> None:
    acme, rows = busy_acme
    owner = logged_in(acme.owner)
    everything = listed(owner)
    assert [r["seq"] for r in everything] == list(range(8, 0, -1))
    assert [r["hash"] for r in everything] == [e["hash"] for e in reversed(rows)]
    assert [r["is_support_access"] for r in everything] == [
        e["actor_type"] == "support" for e in reversed(rows)
    ]
    support = next(r for r in everything if r["is_support_access"])
    assert support["context"]["support_reason"] == REASON

    seen: list[int] = []
    url: str | None = "/api/v1/audit/events/?page_size=2"
    pages = 0
    while url:
        response = owner.get(url)
        assert response.status_code == 200
        page = response.json()
        assert len(page["results"]) <= 2
        seen += [r["seq"] for r in page["results"]]
        url = page["next"]
        pages += 1
    assert (seen, pages) == (list(range(8, 0, -1)), 4)

    # Another tenant's owner sees only his own log.
    assert {r["id"] for r in listed(logged_in(globex.owner))} == {e["id"] for e in chain(globex)}
    for user in (acme.consultant, acme.client):
        assert logged_in(user).get("/api/v1/audit/events/").status_code == 403


def test_the_events_api_filters(busy_acme: tuple[World, list[dict[str, Any]]]) -> None:
    acme, rows = busy_acme
    owner = logged_in(acme.owner)

    def seqs(**query: str) -> list[int]:
        return [r["seq"] for r in listed(owner, **query)]

    assert seqs(actor_type="support") == [7]
    assert seqs(actor_type="api_key") == [6]
    assert seqs(actor_type="system") == [5]
    assert seqs(support="true") == [7]
    assert listed(owner, support="true")[0]["is_support_access"] is True
    assert seqs(support="false") == [8, 6, 5, 4, 3, 2, 1]
    assert seqs(action="message.posted") == [4, 2]
    assert seqs(resource_type="conversation") == [3, 1]
    assert seqs(actor_id=str(acme.owner.pk)) == [8]
    assert seqs(**{"from": rows[1]["created_at"], "to": rows[4]["created_at"]}) == [4, 3, 2]
    assert seqs(**{"from": rows[6]["created_at"]}) == [8, 7]

    for bad in ({"actor_type": "nope"}, {"from": "garbage"}, {"to": "yesterday-ish"}):
        response = owner.get("/api/v1/audit/events/", bad)
        assert response.status_code == 400, bad
        assert response.json()["code"] == "invalid"
    backwards = {"from": rows[4]["created_at"], "to": rows[1]["created_at"]}
    assert owner.get("/api/v1/audit/events/", backwards).json()["code"] == "invalid"


def test_the_audit_page_shows_support_access(acme: World) -> None:
    owner = logged_in(acme.owner)
    before = owner.get("/app/audit/")
    assert before.status_code == 200
    assert "Playbook support has never accessed your data." in before.content.decode()
    assert "Playbook support accessed your data" not in before.content.decode()

    staff = make_staff()
    record_support_view(acme, staff, make_support_session(acme, staff))
    after = owner.get("/app/audit/").content.decode()
    assert "Playbook support accessed your data 1 time." in after
    assert REASON in after
    assert "support.viewed" in after

    assert logged_in(acme.consultant).get("/app/audit/").status_code == 403
    assert logged_in(acme.client).get("/app/audit/").status_code == 403


# --------------------------------------------------------------------------- 10. Celery


def test_a_successful_task_run_is_audited_once(acme: World, globex: World) -> None:
    result = celery_probe.visible_conversations.apply(kwargs={"tenant_id": str(acme.tenant.id)})
    assert result.successful()
    runs = events(acme, action="task.tests.visible_conversations")
    assert len(runs) == 1
    run = runs[0]
    assert (run.actor_type, run.actor_label) == ("system", "system")
    assert (run.resource_type, run.resource_id) == ("task", result.id)
    assert run.context == {"task": "tests.visible_conversations"}
    assert events(globex, action__startswith="task.") == []
    assert_chain_intact(chain(acme), str(acme.tenant.id))


def test_a_failed_task_run_leaves_no_event(acme: World) -> None:
    before = chain(acme)
    result = celery_probe.fails_after_writing.apply(kwargs={"tenant_id": str(acme.tenant.id)})
    assert result.failed()
    assert isinstance(result.result, RuntimeError)
    assert chain(acme) == before
    assert events(acme, action__startswith="task.") == []


def test_the_checkpoint_task_signs_the_head_and_writes_no_event(acme: World) -> None:
    before = chain(acme)
    head = before[-1]
    result = checkpoint_tenant.apply(kwargs={"tenant_id": str(acme.tenant.id)})
    assert result.get() == head["seq"] == 4
    assert chain(acme) == before
    with tenant_context(acme.tenant):
        checkpoint = AuditCheckpoint.objects.get()
    assert (checkpoint.seq, checkpoint.hash, checkpoint.key_id) == (
        4,
        head["hash"],
        signing.key_id(),
    )
    assert ed25519_verify(
        signing.public_bytes(),
        checkpoint_message(str(acme.tenant.id), checkpoint.seq, checkpoint.hash),
        base64.b64decode(checkpoint.signature),
    )
    # Nothing new to sign: no second checkpoint, still no event.
    assert checkpoint_tenant.apply(kwargs={"tenant_id": str(acme.tenant.id)}).get() is None
    assert chain(acme) == before
    with tenant_context(acme.tenant):
        assert AuditCheckpoint.objects.count() == 1
