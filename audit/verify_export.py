#!/usr/bin/env python3
"""Verify a Playbook audit-log export with nothing but Python 3 (no packages).

    python3 verify_export.py audit-acme-2026-11.jsonl --public-key playbook-audit-key.json

The export is JSON Lines: one line per event, then one line `{"manifest": {...}}` signed
with the platform's Ed25519 key (published at /.well-known/playbook-audit-key). This script
checks, and names the first line that fails:

1. the manifest's signature, over the canonical JSON of the manifest without `signature`;
2. that the event lines are exactly the bytes the manifest's `events_sha256` covers;
3. the hash chain: each event's `hash = sha256(prev_hash || canonical JSON of the event
   without "hash")`, each `prev_hash` equal to the previous event's `hash`, `seq` without
   gaps, first and last hash and count as in the manifest.

Canonical JSON (RFC 8785 style): object keys sorted by code point, no insignificant
whitespace, strings as in JSON with only the mandatory escapes (non-ASCII kept as UTF-8),
integers without exponent, no floats. The chain's first `prev_hash` is 64 zeros.

This module is also the one implementation the server uses to hash and verify events.
Exit status: 0 valid, 1 invalid, 2 unusable input.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64
FORMAT = "playbook-audit-v1"
EVENT_FIELDS = (
    "action",
    "actor_id",
    "actor_label",
    "actor_type",
    "agent_run_id",
    "context",
    "created_at",
    "ip",
    "payload_sha256",
    "prev_hash",
    "request_id",
    "resource_id",
    "resource_type",
    "seq",
    "tenant_id",
    "user_agent",
)


def canonical_json(value: Any) -> str:
    if isinstance(value, float):
        raise ValueError("canonical JSON here carries no floats; store them as strings")
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                canonical_json(str(k)) + ":" + canonical_json(v) for k, v in sorted(value.items())
            )
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def event_document(event: dict[str, Any]) -> str:
    """The canonical JSON that an event's hash covers: every field but `hash` (and `id`)."""
    return canonical_json({name: event[name] for name in EVENT_FIELDS})


def chain_hash(prev_hash: str, document: str) -> str:
    return hashlib.sha256((prev_hash + document).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    seq: int | None
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"event seq {self.seq}" if self.seq is not None else "the export"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.reason}"


def verify_chain(
    events: Iterable[dict[str, Any]],
    *,
    expected_prev: str | None = GENESIS_HASH,
    first_seq: int | None = 1,
) -> tuple[ChainProblem | None, int, str | None]:
    """Walk events in order. Returns (first problem or None, count, last hash)."""
    prev_hash, expected_seq, count, last = expected_prev, first_seq, 0, None
    for line, event in enumerate(events, start=1):
        seq = event.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return ChainProblem(None, line, "malformed event (no integer seq)"), count, last
        if expected_seq is not None and seq != expected_seq:
            return (
                ChainProblem(seq, line, f"expected seq {expected_seq}: an event is missing"),
                count,
                last,
            )
        if prev_hash is not None and event.get("prev_hash") != prev_hash:
            return (
                ChainProblem(seq, line, "prev_hash does not match the previous event's hash"),
                count,
                last,
            )
        try:
            recomputed = chain_hash(event["prev_hash"], event_document(event))
        except (KeyError, ValueError, TypeError) as exc:
            return ChainProblem(seq, line, f"malformed event ({exc})"), count, last
        if recomputed != event.get("hash"):
            return ChainProblem(seq, line, "content does not match its hash (altered)"), count, last
        prev_hash, last, count = event["hash"], event["hash"], count + 1
        expected_seq = seq + 1
    return None, count, last


# --------------------------------------------------------------------------- Ed25519
# RFC 8032 verification in pure Python (slow, exact; one signature per export).

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_I = pow(2, (_P - 1) // 4, _P)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _I % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _add(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, point: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, point)
        point = _add(point, point)
        s >>= 1
    return q


def _equal(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _decompress(data: bytes) -> tuple[int, int, int, int] | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_G = (
    15112221349535400772501151409588531511454012693041857206046113283949847762202,
    46316835694926478169428394003475163141307993866256225615783033603165251855960,
    1,
    46827403850823179245072216630277197565144205554125654976674165829533817101731,
)


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decompress(public_key)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    h = (
        int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little")
        % _L
    )
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


# --------------------------------------------------------------------------- export files


def manifest_message(manifest: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in manifest.items() if k != "signature"}).encode()


def public_keys(document: dict[str, Any]) -> dict[str, bytes]:
    """{key id: raw 32-byte Ed25519 public key} from /.well-known/playbook-audit-key."""
    return {
        k["kid"]: base64.urlsafe_b64decode(k["x"] + "=" * (-len(k["x"]) % 4))
        for k in document.get("keys", [])
        if k.get("crv") == "Ed25519"
    }


def verify_export(lines: Iterator[bytes], keys: dict[str, bytes]) -> list[str]:
    """Check an export; return the problems found (empty: valid)."""
    digest = hashlib.sha256()
    events: list[dict[str, Any]] = []
    manifest: dict[str, Any] | None = None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            return [f"line {number}: not JSON"]
        if "manifest" in record:
            manifest = record["manifest"]
            break
        digest.update(raw if raw.endswith(b"\n") else raw + b"\n")
        events.append(record)
    if manifest is None:
        return ["no manifest line: the export is truncated"]
    problems: list[str] = []
    key = keys.get(str(manifest.get("key_id")))
    signature = base64.b64decode(manifest.get("signature", ""))
    if key is None:
        problems.append(f"manifest: signed with unknown key {manifest.get('key_id')!r}")
    elif not ed25519_verify(key, manifest_message(manifest), signature):
        problems.append("manifest: the signature does not verify (manifest altered or forged)")
    if manifest.get("events_sha256") != digest.hexdigest():
        problems.append("events: the lines are not the ones the manifest signed (file edited)")
    problem, count, last = verify_chain(
        events,
        expected_prev=manifest.get("prev_hash"),
        first_seq=manifest.get("first_seq") if events else None,
    )
    if problem is not None:
        problems.append(str(problem))
    if count != manifest.get("count") and problem is None:
        problems.append(f"manifest: count {manifest.get('count')} but {count} events")
    if events and problem is None and last != manifest.get("last_hash"):
        problems.append("manifest: last_hash does not match the last event")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Playbook audit-log export.")
    parser.add_argument("export", help="the .jsonl export")
    parser.add_argument(
        "--public-key",
        required=True,
        help="the JSON from /.well-known/playbook-audit-key, saved to a file",
    )
    args = parser.parse_args(argv)
    try:
        with open(args.public_key, "rb") as handle:
            keys = public_keys(json.load(handle))
        with open(args.export, "rb") as handle:
            problems = verify_export(iter(handle), keys)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot read the input: {exc}", file=sys.stderr)
        return 2
    if problems:
        print("INVALID")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("VALID: signature, file and hash chain check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
