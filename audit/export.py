"""Read the chain back: signed exports, signed checkpoints, and verification of the live log.

Everything here runs inside a tenant context with read access to the log (a tenant admin's
request, or an operator command under `audit_operator()`). The hashing and the checks are
those of `audit/verify_export.py`, the stdlib-only script a tenant runs on its own machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from audit import signing
from audit.models import AuditCheckpoint
from audit.verify_export import (
    FORMAT,
    GENESIS_HASH,
    canonical_json,
    ed25519_verify,
    verify_chain,
)
from tenants.context import require_tenant_id

_COLUMNS = (
    "seq, id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
    "actor_type, actor_id, actor_label, action, resource_type, resource_id, request_id, "
    "agent_run_id, host(ip), user_agent, payload_sha256, context::text, prev_hash, hash, "
    "tenant_id::text"
)
_NAMES = (
    "seq",
    "id",
    "created_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "resource_type",
    "resource_id",
    "request_id",
    "agent_run_id",
    "ip",
    "user_agent",
    "payload_sha256",
    "context",
    "prev_hash",
    "hash",
    "tenant_id",
)


def iter_events(
    start: datetime | None = None, end: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """The current tenant's events in chain order, as the dicts that are hashed and exported.
    Streams through a server-side cursor: memory stays flat for any log size."""
    tenant_id = require_tenant_id()
    where, params = ["tenant_id = %s"], [tenant_id]  # type: list[str], list[Any]
    if start is not None:
        where.append("created_at >= %s")
        params.append(start)
    if end is not None:
        where.append("created_at < %s")
        params.append(end)
    query = (
        f"SELECT {_COLUMNS} FROM public.audit_auditevent WHERE {' AND '.join(where)} "  # noqa: S608
        "ORDER BY seq"
    )
    with connection.chunked_cursor() as cursor:
        cursor.execute(query, params)
        while rows := cursor.fetchmany(500):
            for row in rows:
                event = dict(zip(_NAMES, row, strict=True))
                # Django's psycopg loader returns jsonb as text; the hash covers the object.
                event["context"] = json.loads(event["context"])
                yield event


def chain_head() -> tuple[int, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, hash FROM public.audit_chain_heads WHERE tenant_id = %s",
            [require_tenant_id()],
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, GENESIS_HASH)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_message(tenant_id: str, seq: int, digest: str) -> bytes:
    return canonical_json({"hash": digest, "seq": seq, "tenant_id": tenant_id}).encode()


def create_checkpoint() -> AuditCheckpoint | None:
    """Sign the chain's current head (nothing to do if it is empty or already signed)."""
    tenant_id = require_tenant_id()
    seq, digest = chain_head()
    if seq == 0 or AuditCheckpoint.objects.filter(seq=seq).exists():
        return None
    return AuditCheckpoint.objects.create(
        seq=seq,
        hash=digest,
        key_id=signing.key_id(),
        signature=signing.sign(checkpoint_message(str(tenant_id), seq, digest)),
    )


# --------------------------------------------------------------------------- export


def _line(record: dict[str, Any]) -> bytes:
    return (canonical_json(record) + "\n").encode()


def iter_export(start: datetime | None = None, end: datetime | None = None) -> Iterator[bytes]:
    """JSON Lines: one event per line, then the signed manifest line."""
    tenant_id = str(require_tenant_id())
    digest = hashlib.sha256()
    count, first, last = 0, None, None
    for event in iter_events(start, end):
        line = _line(event)
        digest.update(line)
        count += 1
        first = first or event
        last = event
        yield line
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "tenant_id": tenant_id,
        "from": start.isoformat() if start else None,
        "to": end.isoformat() if end else None,
        "count": count,
        "first_seq": first["seq"] if first else None,
        "last_seq": last["seq"] if last else None,
        "prev_hash": first["prev_hash"] if first else None,
        "first_hash": first["hash"] if first else None,
        "last_hash": last["hash"] if last else None,
        "events_sha256": digest.hexdigest(),
        "generated_at": timezone.now().isoformat(),
        "key_id": signing.key_id(),
    }
    manifest["signature"] = signing.sign(
        canonical_json({k: v for k, v in manifest.items() if k != "signature"}).encode()
    )
    yield _line({"manifest": manifest})


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    problems: list[str]


def verify_tenant_log() -> VerifyResult:
    """Check the live log of the current tenant: the chain from genesis, the chain head, and
    every signed checkpoint. A rewrite that re-hashes the tail still contradicts the
    checkpoints signed before it, which only the platform key could re-sign."""
    tenant_id = str(require_tenant_id())
    events = list(iter_events())
    problems: list[str] = []
    problem, count, last = verify_chain(events)
    if problem is not None:
        problems.append(str(problem))
    by_seq = {event["seq"]: event for event in events}
    head_seq, head_hash = chain_head()
    if problem is None and (head_seq, head_hash) != (count, last or GENESIS_HASH):
        problems.append(
            f"the chain ends at seq {count} but its recorded head is seq {head_seq}: "
            "events were removed from the end or the head was altered"
        )
    public = signing.public_bytes()
    for checkpoint in AuditCheckpoint.objects.order_by("seq"):
        message = checkpoint_message(tenant_id, checkpoint.seq, checkpoint.hash)
        if checkpoint.key_id != signing.key_id() or not ed25519_verify(
            public, message, base64.b64decode(checkpoint.signature)
        ):
            problems.append(f"checkpoint at seq {checkpoint.seq}: signature does not verify")
            continue
        event = by_seq.get(checkpoint.seq)
        if event is None:
            problems.append(f"event seq {checkpoint.seq} is missing but was signed in a checkpoint")
        elif event["hash"] != checkpoint.hash:
            problems.append(
                f"event seq {checkpoint.seq} (id {event['id']}) differs from its signed "
                "checkpoint: the log was rewritten at or before this event"
            )
    return VerifyResult(ok=not problems, count=count, problems=problems)
