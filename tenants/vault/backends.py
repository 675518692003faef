"""Key-encryption-key (KEK) backends: local keys, AWS KMS, HashiCorp Vault transit.

Each wraps and unwraps a tenant's 32-byte data key, bound to the tenant by an encryption
context, and names the KEK version it used so that old versions keep working until
`manage.py rotate_kek` has re-wrapped every data key.

AWS KMS and Vault are services that can be down, slow or throttling: every call to them is
bounded (VAULT_CONNECT_TIMEOUT_SECONDS, VAULT_READ_TIMEOUT_SECONDS, VAULT_MAX_ATTEMPTS) and
every way it can fail -- refused or timed-out connection, DNS, TLS, throttling, an error
answer -- becomes one exception, `CredentialStoreUnavailable`, whose message names the store
and what went wrong (never an address, a key id or key material).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import hvac
import hvac.exceptions
import requests
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import SSLError as BotoSSLError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)


class VaultError(Exception):
    """A key or ciphertext could not be used. Messages never contain key material."""


class CredentialStoreUnavailable(VaultError):
    """The KMS or Vault could not do what a credential needed: unreachable, slow, throttling,
    or it answered with an error. The call that needed the credential fails (API: 503
    `credential_store_unavailable` with Retry-After; agent run: a clear failure; settings
    page: a form error, nothing saved); nothing else depends on the store."""

    code = "credential_store_unavailable"
    retry_after = 30
    user_message = (
        "The credential store is unavailable right now, so the credential could not be used "
        "or saved; nothing was changed. Try again in a minute."
    )

    def __init__(self, store: str, what: str) -> None:
        super().__init__(f"{store} {what}.")
        self.store, self.what = store, what


# Error codes of an answer that asks the caller to slow down (AWS and Vault).
THROTTLING = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "LimitExceededException",
        "RateLimitExceeded",
    }
)


def _refused(exc: Exception) -> bool:
    """An answer that says no (4xx: access, key or ciphertext), not a broken store (5xx)."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 400
        return int(status) < 500
    return isinstance(exc, hvac.exceptions.VaultError) and not isinstance(
        exc,
        hvac.exceptions.InternalServerError
        | hvac.exceptions.VaultDown
        | hvac.exceptions.BadGateway
        | hvac.exceptions.UnexpectedError,
    )


def _what_failed(action: str, exc: Exception) -> str:
    """How a call to a store failed, in words safe to show (the exception's class or error
    code, never its message: botocore's and hvac's name the endpoint)."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.ConnectTimeout | ConnectTimeoutError):
        return f"did not accept a connection in time ({name})"
    if isinstance(exc, requests.exceptions.Timeout | ReadTimeoutError):
        return f"did not answer in time ({name})"
    if isinstance(exc, requests.exceptions.SSLError | BotoSSLError):
        return f"failed the TLS handshake ({name})"
    if isinstance(exc, requests.exceptions.ConnectionError | EndpointConnectionError | OSError):
        return f"could not be reached ({name})"  # refused, reset, DNS
    code = (
        str(exc.response.get("Error", {}).get("Code") or name)
        if isinstance(exc, ClientError)
        else name
    )
    if code in THROTTLING:
        return f"is throttling requests ({code})"
    if _refused(exc):
        return f"refused to {action} ({code})"
    return f"failed to {action} ({code})"


@contextmanager
def store_call(store: str, action: str) -> Iterator[None]:
    """Run one call to a store (and the reading of its answer); any failure leaves as
    CredentialStoreUnavailable, logged with what went wrong."""
    try:
        yield
    except CredentialStoreUnavailable:
        raise
    except Exception as exc:
        what = _what_failed(action, exc)
        logger.warning("credential store call failed: %s %s", store, what)
        raise CredentialStoreUnavailable(store, what) from None


@dataclass(frozen=True)
class Wrapped:
    blob: bytes
    kek_version: str


class KekBackend(Protocol):
    name: str

    def current_version(self) -> str: ...

    def wrap(self, data_key: bytes, tenant_id: str) -> Wrapped: ...

    def unwrap(self, wrapped: Wrapped, tenant_id: str) -> bytes: ...


def _context(tenant_id: str) -> bytes:
    return f"playbook-data-key:v1:{tenant_id}".encode()


class LocalKekBackend:
    """KEKs from VAULT_LOCAL_KEYS (JSON {"version": base64 key}) or VAULT_LOCAL_KEY_FILE (the
    same JSON in a file; `make dev` generates one). The highest version wraps new keys."""

    name = "local"

    def __init__(self, keys: dict[str, bytes]) -> None:
        if not keys:
            raise ImproperlyConfigured(
                "The local vault backend has no key: set VAULT_LOCAL_KEYS or VAULT_LOCAL_KEY_FILE."
            )
        for version, key in keys.items():
            if len(key) != 32:
                raise ImproperlyConfigured(f"Local vault key version {version} is not 32 bytes.")
        self.keys = keys

    @classmethod
    def from_settings(cls) -> LocalKekBackend:
        raw = settings.VAULT_LOCAL_KEYS
        if (
            not raw
            and settings.VAULT_LOCAL_KEY_FILE
            and Path(settings.VAULT_LOCAL_KEY_FILE).exists()
        ):
            raw = Path(settings.VAULT_LOCAL_KEY_FILE).read_text()
        try:
            data = json.loads(raw) if raw else {}
            keys = {str(v): base64.b64decode(k) for v, k in data.items()}
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                'VAULT_LOCAL_KEYS must be JSON like {"1": "<base64 of 32 bytes>"}.'
            ) from None
        return cls(keys)

    def current_version(self) -> str:
        return max(self.keys, key=int)

    def wrap(self, data_key: bytes, tenant_id: str) -> Wrapped:
        version = self.current_version()
        nonce = os.urandom(12)
        blob = nonce + AESGCM(self.keys[version]).encrypt(nonce, data_key, _context(tenant_id))
        return Wrapped(blob=blob, kek_version=version)

    def unwrap(self, wrapped: Wrapped, tenant_id: str) -> bytes:
        key = self.keys.get(wrapped.kek_version)
        if key is None:
            raise VaultError(
                f"Key-encryption key version {wrapped.kek_version} is not configured "
                "(was it removed before `manage.py rotate_kek` re-wrapped everything?)."
            )
        try:
            return AESGCM(key).decrypt(wrapped.blob[:12], wrapped.blob[12:], _context(tenant_id))
        except Exception:
            raise VaultError(
                "The data key does not unwrap with this key for this tenant."
            ) from None


class AwsKmsBackend:
    """AWS KMS: Encrypt/Decrypt with EncryptionContext {"tenant_id": ...}. The KEK version is
    the KMS key id (rotate_kek moves data keys to the key in VAULT_AWS_KMS_KEY_ID)."""

    name = "aws_kms"

    def __init__(self, key_id: str, region: str, endpoint_url: str | None = None) -> None:
        if not key_id:
            raise ImproperlyConfigured("Set VAULT_AWS_KMS_KEY_ID for the aws_kms vault backend.")
        import boto3  # heavy: only when this backend is configured

        self.key_id = key_id
        self.client = boto3.client(
            "kms",
            region_name=region,
            endpoint_url=endpoint_url or None,
            config=Config(
                connect_timeout=settings.VAULT_CONNECT_TIMEOUT_SECONDS,
                read_timeout=settings.VAULT_READ_TIMEOUT_SECONDS,
                # Standard mode retries throttling and transient errors with backoff;
                # total_max_attempts counts the first try.
                retries={"total_max_attempts": settings.VAULT_MAX_ATTEMPTS, "mode": "standard"},
            ),
        )

    def current_version(self) -> str:
        return self.key_id

    def wrap(self, data_key: bytes, tenant_id: str) -> Wrapped:
        with store_call("AWS KMS", "wrap the data key"):
            response = self.client.encrypt(
                KeyId=self.key_id, Plaintext=data_key, EncryptionContext={"tenant_id": tenant_id}
            )
            return Wrapped(blob=bytes(response["CiphertextBlob"]), kek_version=self.key_id)

    def unwrap(self, wrapped: Wrapped, tenant_id: str) -> bytes:
        with store_call("AWS KMS", "unwrap the data key"):
            response = self.client.decrypt(
                CiphertextBlob=wrapped.blob,
                KeyId=wrapped.kek_version,
                EncryptionContext={"tenant_id": tenant_id},
            )
            return bytes(response["Plaintext"])


class VaultTransitBackend:
    """HashiCorp Vault's transit engine (hvac), with a derived key: the tenant id is the
    derivation context. The KEK version is the transit key version ("vault:vN:...")."""

    name = "vault_transit"

    def __init__(self, url: str, token: str, key_name: str, mount: str = "transit") -> None:
        if not (url and token and key_name):
            raise ImproperlyConfigured(
                "Set VAULT_ADDR, VAULT_TOKEN and VAULT_TRANSIT_KEY for the vault_transit backend."
            )
        # (connect, read) seconds for every request (requests' timeout); no retries.
        self.client = hvac.Client(
            url=url,
            token=token,
            timeout=(settings.VAULT_CONNECT_TIMEOUT_SECONDS, settings.VAULT_READ_TIMEOUT_SECONDS),
        )
        self.key_name, self.mount = key_name, mount

    @staticmethod
    def _b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def current_version(self) -> str:
        with store_call("Vault", "read the transit key"):
            key = self.client.secrets.transit.read_key(name=self.key_name, mount_point=self.mount)
            return str(key["data"]["latest_version"])

    def wrap(self, data_key: bytes, tenant_id: str) -> Wrapped:
        with store_call("Vault", "wrap the data key"):
            response = self.client.secrets.transit.encrypt_data(
                name=self.key_name,
                plaintext=self._b64(data_key),
                context=self._b64(tenant_id.encode()),
                mount_point=self.mount,
            )
            ciphertext = response["data"]["ciphertext"]
            version = ciphertext.split(":")[1].lstrip("v")
            return Wrapped(blob=ciphertext.encode(), kek_version=version)

    def unwrap(self, wrapped: Wrapped, tenant_id: str) -> bytes:
        with store_call("Vault", "unwrap the data key"):
            response = self.client.secrets.transit.decrypt_data(
                name=self.key_name,
                ciphertext=wrapped.blob.decode(),
                context=self._b64(tenant_id.encode()),
                mount_point=self.mount,
            )
            return base64.b64decode(response["data"]["plaintext"])


@cache
def _backend(name: str) -> KekBackend:
    if name == "local":
        return LocalKekBackend.from_settings()
    if name == "aws_kms":
        return AwsKmsBackend(
            settings.VAULT_AWS_KMS_KEY_ID,
            settings.VAULT_AWS_REGION,
            settings.VAULT_AWS_ENDPOINT_URL or None,
        )
    if name == "vault_transit":
        return VaultTransitBackend(
            settings.VAULT_ADDR,
            settings.VAULT_TOKEN,
            settings.VAULT_TRANSIT_KEY,
            settings.VAULT_TRANSIT_MOUNT,
        )
    raise ImproperlyConfigured(f"Unknown VAULT_BACKEND {name!r} (local, aws_kms, vault_transit).")


def kek_backend(name: str | None = None) -> KekBackend:
    return _backend(name or settings.VAULT_BACKEND)


def reset_backends() -> None:
    """Forget configured backends (after settings change: tests, key rotation)."""
    _backend.cache_clear()
