"""The platform's Ed25519 key that signs audit exports and chain checkpoints.

AUDIT_SIGNING_KEY_FILE names a PEM (PKCS#8) private key; `make dev` generates one in .data/.
Its public half is served at /.well-known/playbook-audit-key as a JWK set.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@functools.cache
def _private_key(path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ImproperlyConfigured(
            "AUDIT_SIGNING_KEY_FILE does not name a readable Ed25519 PEM key "
            f"({type(exc).__name__})."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured("AUDIT_SIGNING_KEY_FILE must hold an Ed25519 key.")
    return key


def private_key() -> Ed25519PrivateKey:
    if not settings.AUDIT_SIGNING_KEY_FILE:
        raise ImproperlyConfigured("Set AUDIT_SIGNING_KEY_FILE to the audit signing key (PEM).")
    return _private_key(settings.AUDIT_SIGNING_KEY_FILE)


def public_bytes() -> bytes:
    return (
        private_key()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def key_id() -> str:
    return hashlib.sha256(public_bytes()).hexdigest()[:16]


def sign(message: bytes) -> str:
    return base64.b64encode(private_key().sign(message)).decode()


def public_jwks() -> dict[str, Any]:
    x = base64.urlsafe_b64encode(public_bytes()).rstrip(b"=").decode()
    return {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": key_id(), "x": x}
        ]
    }
