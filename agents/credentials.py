"""The one door from the agent platform to a tenant's secrets: the credential vault.

Callers never hold a secret beyond one call: `using_credential` decrypts it for the block
(model call, tool call, embedding batch) and drops it; `has_credential` answers without
decrypting. Both run inside the tenant context and see only the tenant's own credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tenants.models import Credential
from tenants.vault.service import use_credential


def _lookup(kind: str, name: str | None) -> Any:
    found = Credential.objects.filter(kind=kind)
    if name:
        found = found.filter(name=name)
    return found.order_by("-created_at").values("id", "metadata").first()


def has_credential(kind: str, name: str | None = None) -> bool:
    return _lookup(kind, name) is not None


@contextmanager
def using_credential(kind: str, name: str | None = None) -> Iterator[dict[str, Any]]:
    """{"secret": ..., plus the credential's non-secret metadata (base_url, ...)} for one call.
    Raises tenants.vault.service.CredentialNotFound when the tenant has none."""
    found = _lookup(kind, name)
    with use_credential(
        credential_id=found["id"] if found else None,
        name=None if found else (name or kind),
        kind=kind,
    ) as secret:
        yield {**(found["metadata"] if found else {}), "secret": secret}
