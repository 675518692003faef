"""The tool registry: Python callables with JSON schemas. A run binds only the tools its
tenant is entitled to, and the tool node refuses (and audits) any other name."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings

from agents.credentials import using_credential
from agents.retrieval import search_playbook
from tenants.vault.backends import CredentialStoreUnavailable
from tenants.vault.service import CredentialNotFound


def passage_dict(passage: Any) -> dict[str, Any]:
    """A retrieved passage as plain JSON (for graph state, prompts and citations)."""
    data = dataclasses.asdict(passage)
    return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in data.items()}


class ToolError(Exception):
    """A tool could not do its job; the message goes back to the model (no secrets)."""


@dataclass
class ToolContext:
    """What a tool call may touch: the run's tenant (via the context), its entitlement
    config for this tool, and a place to report side effects to the graph."""

    config: dict[str, Any]
    passages: list[dict[str, Any]] = field(default_factory=list)
    handoff_reason: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[[dict[str, Any], ToolContext], str]

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema that chat models bind."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def _search_playbook(args: dict[str, Any], ctx: ToolContext) -> str:
    query = str(args.get("query", "")).strip()
    if not query:
        raise ToolError("query is required")
    k = max(1, min(int(args.get("k", 5)), 10))
    passages = [passage_dict(p) for p in search_playbook(query, k=k)]
    ctx.passages.extend(passages)
    if not passages:
        return "No passage of the playbook matches."
    return "\n\n".join(f"[{p['title']} #{p['position']}] {p['text']}" for p in passages)


def _request_human_handoff(args: dict[str, Any], ctx: ToolContext) -> str:
    ctx.handoff_reason = str(args.get("reason", "")).strip() or "The assistant asked for help."
    return "Your consultant has been asked to take over this conversation."


def _is_public_address(host: str) -> bool:
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return all(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses)


def _http_request(args: dict[str, Any], ctx: ToolContext) -> str:
    """Call the endpoint the tenant configured (never a URL the model chooses), with the
    tenant's credential, and return the (truncated) response."""
    url = str(ctx.config.get("url", ""))
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ToolError("no endpoint is configured for this tool")
    if not settings.AGENT_HTTP_ALLOW_PRIVATE and not _is_public_address(parts.hostname):
        raise ToolError("the configured endpoint is not a public address")
    headers = {"Accept": "application/json, text/plain;q=0.9"}
    method = str(ctx.config.get("method", "POST")).upper()
    payload = {"query": str(args.get("query", ""))[:2000]}

    def send(extra_headers: dict[str, str]) -> requests.Response:
        try:
            return requests.request(
                method,
                url,
                json=payload if method != "GET" else None,
                params=payload if method == "GET" else None,
                headers={**headers, **extra_headers},
                timeout=float(ctx.config.get("timeout", 10)),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ToolError(f"the endpoint did not answer ({type(exc).__name__})") from None

    credential_name = ctx.config.get("credential")
    if credential_name:
        # Decrypted for this request only (and never echoed back to the model).
        try:
            with using_credential("http_bearer", credential_name) as credential:
                response = send({"Authorization": f"Bearer {credential['secret']}"})
        except CredentialNotFound:
            raise ToolError("the credential for this endpoint is missing") from None
        except CredentialStoreUnavailable:
            raise ToolError(
                "the credential for this endpoint could not be unlocked (the credential store "
                "is unavailable)"
            ) from None
    else:
        response = send({})
    if response.status_code >= 400:
        raise ToolError(f"the endpoint answered {response.status_code}")
    return response.text[:4000]


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "search_playbook",
            "Search the consultant's playbook for passages relevant to a question.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for."},
                    "k": {"type": "integer", "minimum": 1, "maximum": 10},
                },
                "required": ["query"],
            },
            _search_playbook,
        ),
        ToolSpec(
            "request_human_handoff",
            "Ask the consultant to take over when the playbook does not cover the question "
            "or the client needs a human.",
            {
                "type": "object",
                "properties": {"reason": {"type": "string"}},
                "required": ["reason"],
            },
            _request_human_handoff,
        ),
        ToolSpec(
            "http_request",
            "Query the consultant's own system (configured by her team) with a question.",
            {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
            _http_request,
        ),
    )
}


def entitled_specs(entitled: dict[str, dict[str, Any]]) -> list[ToolSpec]:
    return [TOOLS[name] for name in sorted(entitled) if name in TOOLS]


def format_result(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
