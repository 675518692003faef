"""Partner API keys: `pbk_<tenant>_<prefix>.<secret>`, stored as SHA-256, shown once.

The tenant part tells the server which tenant to look in, under row-level security; it
proves nothing by itself: a key authenticates only if its SHA-256 matches a stored,
active key of that tenant (compared in constant time). Keys carry 256 bits of randomness,
so a fast hash is the right hash (as for GitHub or Stripe keys).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, User
from audit.actions import record_audit_event
from tenants.context import TenantContextRefused, require_tenant_id, tenant_context

KEY_PATTERN = re.compile(
    r"^pbk_(?P<tenant>[0-9a-f]{32})_(?P<prefix>[A-Za-z0-9]{10})\.(?P<secret>[A-Za-z0-9_-]{43})$"
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_api_key(token: str) -> bool:
    return token.startswith("pbk_")


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str


@transaction.atomic
def issue_api_key(
    *, acting_user: User | None, name: str, scope: str, expires_at: datetime | None
) -> IssuedKey:
    """Create a key in the current tenant. The plaintext exists only in the return value."""
    tenant_id = require_tenant_id()
    prefix = secrets.token_hex(5)
    plaintext = f"pbk_{tenant_id.hex}_{prefix}.{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        name=name.strip(),
        prefix=prefix,
        key_hash=hash_key(plaintext),
        scope=scope,
        created_by=acting_user,
        expires_at=expires_at,
    )
    record_audit_event(
        "api_key.created",
        actor=acting_user,
        resource_type="api_key",
        resource_id=api_key.id,
        context={"name": api_key.name, "scope": scope, "prefix": prefix},
    )
    return IssuedKey(api_key=api_key, plaintext=plaintext)


@transaction.atomic
def revoke_api_key(*, acting_user: object, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        record_audit_event(
            "api_key.revoked",
            actor=acting_user,
            resource_type="api_key",
            resource_id=api_key.id,
            context={"prefix": api_key.prefix},
        )
    return api_key


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """Who a request authenticated with an API key is: the key, acting for its tenant."""

    api_key_id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    prefix: str
    scope: str
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    is_anonymous: bool = False
    actor_type: str = "api_key"

    @property
    def pk(self) -> uuid.UUID:
        return self.api_key_id

    def __str__(self) -> str:
        return f"API key {self.name} ({self.prefix}…)"


def authenticate_api_key(token: str) -> ApiKeyPrincipal | None:
    match = KEY_PATTERN.match(token)
    if match is None:
        return None
    tenant_id = uuid.UUID(match["tenant"])
    digest = hash_key(token)
    try:
        with tenant_context(tenant_id):
            return _verified_key(tenant_id, match["prefix"], digest)
    except TenantContextRefused:  # no such tenant
        return None


def _verified_key(tenant_id: uuid.UUID, prefix: str, digest: str) -> ApiKeyPrincipal | None:
    """The key with this prefix in the current tenant, if the secret matches and it is live."""
    candidate = ApiKey.objects.filter(prefix=prefix).first()
    if candidate is None or not hmac.compare_digest(candidate.key_hash, digest):
        return None
    if not candidate.is_active:
        return None
    now = timezone.now()
    # Coarse last-used stamp: at most one write a minute per key.
    if candidate.last_used_at is None or (now - candidate.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(id=candidate.id).update(last_used_at=now)
    return ApiKeyPrincipal(
        api_key_id=candidate.id,
        tenant_id=tenant_id,
        name=candidate.name,
        prefix=candidate.prefix,
        scope=candidate.scope,
    )
