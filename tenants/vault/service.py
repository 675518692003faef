"""Credentials: create, rotate, delete, and the one way to use one (`use_credential`).

The plaintext exists only inside `use_credential`'s block: decrypted when entered (unwrapping
the tenant's data key through the KMS backend), dropped when left. Nothing caches it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import transaction
from django.utils import timezone

from audit.actions import record_audit_event
from tenants.context import require_tenant_id
from tenants.models import Credential, TenantDataKey
from tenants.vault.backends import VaultError, Wrapped, kek_backend

REDACTED = "[redacted]"


class CredentialNotFound(VaultError):
    """No such credential in the current tenant (another tenant's is equally invisible)."""


class CredentialUseError(VaultError):
    """A call made with a credential failed; the message has the secret removed."""


def _aad(tenant_id: str, credential_id: str) -> bytes:
    # Binds a ciphertext to its tenant and row: copied anywhere else, it does not decrypt.
    return f"playbook-credential:v1:{tenant_id}:{credential_id}".encode()


def _unwrap(data_key: TenantDataKey) -> bytes:
    backend = kek_backend(data_key.kek_backend)
    return backend.unwrap(
        Wrapped(bytes(data_key.wrapped_key), data_key.kek_version), str(data_key.tenant_id)
    )


def _current_data_key() -> tuple[TenantDataKey, bytes]:
    """The tenant's newest data key and its plaintext: unwrapped by the KEK, or created (and
    wrapped) on first use. Raises CredentialStoreUnavailable when the KMS cannot do it; the
    caller's transaction then keeps nothing."""
    key = TenantDataKey.objects.order_by("-version").first()
    if key is not None:
        return key, _unwrap(key)
    tenant_id = str(require_tenant_id())
    backend = kek_backend()
    plaintext = AESGCM.generate_key(bit_length=256)
    wrapped = backend.wrap(plaintext, tenant_id)
    row = TenantDataKey.objects.create(
        version=1,
        wrapped_key=wrapped.blob,
        kek_backend=backend.name,
        kek_version=wrapped.kek_version,
    )
    return row, plaintext


def _seal(credential: Credential, secret: str) -> None:
    data_key, plaintext_key = _current_data_key()
    nonce = os.urandom(12)
    aad = _aad(str(require_tenant_id()), str(credential.id))
    credential.ciphertext = AESGCM(plaintext_key).encrypt(nonce, secret.encode(), aad)
    credential.nonce = nonce
    credential.key_version = data_key.version
    credential.last_four = secret[-4:] if len(secret) >= 12 else ""


@transaction.atomic
def create_credential(
    *, acting_user: Any, name: str, kind: str, secret: str, metadata: dict[str, Any] | None = None
) -> Credential:
    credential = Credential(
        name=name.strip(),
        kind=kind,
        metadata=dict(metadata or {}),
        created_by=acting_user if getattr(acting_user, "tenant_id", None) else None,
    )
    _seal(credential, secret)
    credential.save()
    record_audit_event(
        "credential.created",
        actor=acting_user,
        resource_type="credential",
        resource_id=credential.id,
        payload={"name": name, "kind": kind},
        context={"name": credential.name, "kind": kind},
    )
    return credential


@transaction.atomic
def rotate_credential(*, acting_user: Any, credential: Credential, secret: str) -> Credential:
    _seal(credential, secret)
    credential.rotated_at = timezone.now()
    credential.save(update_fields=["ciphertext", "nonce", "key_version", "last_four", "rotated_at"])
    record_audit_event(
        "credential.rotated",
        actor=acting_user,
        resource_type="credential",
        resource_id=credential.id,
        payload={"name": credential.name},
        context={"name": credential.name, "kind": credential.kind},
    )
    return credential


@transaction.atomic
def delete_credential(*, acting_user: Any, credential: Credential) -> None:
    record_audit_event(
        "credential.deleted",
        actor=acting_user,
        resource_type="credential",
        resource_id=credential.id,
        payload={"name": credential.name},
        context={"name": credential.name, "kind": credential.kind},
    )
    credential.delete()


def decrypt(credential: Credential) -> str:
    data_key = TenantDataKey.objects.filter(version=credential.key_version).first()
    if data_key is None:
        raise VaultError(
            f"Credential {credential.name!r} names data key version {credential.key_version}, "
            "which this tenant does not have."
        )
    aad = _aad(str(require_tenant_id()), str(credential.id))
    try:
        plaintext = AESGCM(_unwrap(data_key)).decrypt(
            bytes(credential.nonce), bytes(credential.ciphertext), aad
        )
    except InvalidTag:
        raise VaultError(
            f"Credential {credential.name!r} does not decrypt: its ciphertext belongs to "
            "another credential, tenant or key."
        ) from None
    return plaintext.decode()


@contextmanager
def use_credential(
    name: str | None = None, *, kind: str | None = None, credential_id: Any = None
) -> Iterator[str]:
    """Decrypt a credential of the current tenant for one call, then drop it.

    Records `last_used_at` and a `credential.used` audit event (never the secret). An
    exception raised inside the block leaves with the secret removed from its message.
    """
    found = Credential.objects.all()
    if credential_id is not None:
        found = found.filter(id=credential_id)
    if name is not None:
        found = found.filter(name=name)
    if kind is not None:
        found = found.filter(kind=kind)
    credential = found.order_by("-created_at").first()
    if credential is None:
        raise CredentialNotFound(
            f"No credential {name or kind or credential_id!r} in this organisation."
        )
    secret = decrypt(credential)
    Credential.objects.filter(id=credential.id).update(last_used_at=timezone.now())
    record_audit_event(
        "credential.used",
        actor_type="system",
        resource_type="credential",
        resource_id=credential.id,
        context={"name": credential.name, "kind": credential.kind},
    )
    try:
        yield secret
    except Exception as exc:
        message = str(exc)
        if secret and secret in message:
            # The SDK quoted the key back (e.g. "Incorrect API key: sk-..."): the exception
            # leaves without it, and without its chain (whose frames held the key).
            cleaned = message.replace(secret, REDACTED)
            raise CredentialUseError(f"{type(exc).__name__}: {cleaned}") from None
        raise
    finally:
        del secret


def rewrap_data_keys(target_backend: str | None = None) -> int:
    """Re-wrap the current tenant's data keys under the current KEK (version or backend).
    The data keys themselves do not change, so no credential needs re-encrypting."""
    backend = kek_backend(target_backend)
    tenant_id = str(require_tenant_id())
    count = 0
    for data_key in TenantDataKey.objects.order_by("version"):
        if (
            data_key.kek_backend == backend.name
            and data_key.kek_version == backend.current_version()
        ):
            continue
        plaintext = _unwrap(data_key)
        wrapped = backend.wrap(plaintext, tenant_id)
        data_key.wrapped_key, data_key.kek_backend = wrapped.blob, backend.name
        data_key.kek_version = wrapped.kek_version
        data_key.rewrapped_at = timezone.now()
        data_key.save(update_fields=["wrapped_key", "kek_backend", "kek_version", "rewrapped_at"])
        count += 1
    if count:
        record_audit_event(
            "vault.kek_rotated",
            actor_type="system",
            resource_type="data_key",
            context={
                "backend": backend.name,
                "kek_version": backend.current_version(),
                "rewrapped": count,
            },
        )
    return count
