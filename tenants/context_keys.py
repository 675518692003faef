"""Install the tenant-context signing keys in the database (owner role only).

The database stores each key as its two RFC 2104 padded forms (key XOR ipad, key XOR opad)
in `playbook_context_keys`, which only the owner role can read; `playbook_enter` and
`playbook_context_tenant` compute HMAC-SHA256 from them with two sha256() calls. The
configured keys are the truth: installing adds new ones, replaces changed ones and removes
keys no longer configured. Rotation: configure `new,old`, deploy (every process now signs
with `new`, old contexts still verify), then configure `new` alone.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import connections

BLOCK_SIZE = 64  # SHA-256's block size in bytes


def padded_keys(secret: bytes) -> tuple[bytes, bytes]:
    key = hashlib.sha256(secret).digest() if len(secret) > BLOCK_SIZE else secret
    key = key.ljust(BLOCK_SIZE, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def install_context_keys(using: str = "owner") -> list[str]:
    """Make the database's keys the configured ones; returns the installed key ids."""
    keys = settings.TENANT_CONTEXT_KEYS
    with connections[using].cursor() as cursor:
        for kid, secret in keys:
            ipad, opad = padded_keys(secret)
            cursor.execute(
                "INSERT INTO public.playbook_context_keys (kid, ipad, opad) VALUES (%s, %s, %s) "
                "ON CONFLICT (kid) DO UPDATE SET ipad = EXCLUDED.ipad, opad = EXCLUDED.opad, "
                "installed_at = now() "
                "WHERE playbook_context_keys.ipad <> EXCLUDED.ipad",
                [kid, ipad, opad],
            )
        cursor.execute(
            "DELETE FROM public.playbook_context_keys WHERE NOT (kid = ANY(%s))",
            [[kid for kid, _ in keys]],
        )
    return [kid for kid, _ in keys]
