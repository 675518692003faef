"""The one door to a tenant's secrets (API keys of model providers, bearer tokens of tools).

Every caller that needs a secret goes through `get_credential(kind, name)`, inside the
tenant context, so that the credential store can change without touching them.

There is no credential store yet: `get_credential` returns None, and each caller degrades
clearly (the chat model falls back to the offline responder, the OpenAI embedder raises
`EmbedderUnavailable` with a message saying a key is missing, an HTTP tool refuses). The
vault work replaces the body of this function (encrypted per-tenant secrets under
row-level security); the signature and the returned shape stay:

    {"secret": "<the key or token>", "base_url": "<optional endpoint>", ...}
"""

from __future__ import annotations

from typing import Any

from tenants.context import require_tenant_id


def get_credential(kind: str, name: str | None = None) -> dict[str, Any] | None:
    """The current tenant's credential of `kind` ("openai", "anthropic", "http_bearer", …),
    optionally the one called `name`; None when the tenant has none."""
    require_tenant_id()
    return None
