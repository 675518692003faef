"""The tool registry: Python callables with JSON schemas. A run binds only the tools its
tenant is entitled to, and the tool node refuses (and audits) any other name."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from agents.credentials import using_credential
from agents.retrieval import search_playbook
from tenants.outbound import OutboundError, OutboundLimits, outbound_client
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


# The tool keeps 4,000 characters of an answer; a larger one is not read at all.
HTTP_TOOL_MAX_RESPONSE_BYTES = 1024 * 1024
HTTP_TOOL_MAX_TIMEOUT = 30.0


def _timeout(raw: Any) -> float:
    """The tenant's timeout for its endpoint, from 1 to 30 seconds (10 when unusable)."""
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return 10.0
    return min(max(seconds, 1.0), HTTP_TOOL_MAX_TIMEOUT) if math.isfinite(seconds) else 10.0


def _http_request(args: dict[str, Any], ctx: ToolContext) -> str:
    """Call the endpoint the tenant configured (never a URL the model chooses), with the
    tenant's credential, and return the (truncated) response. The call goes through
    tenants.outbound: private networks are refused before anything is sent."""
    url = ctx.config.get("url")
    if not isinstance(url, str) or not url:
        raise ToolError("no endpoint is configured for this tool")
    headers = {"Accept": "application/json, text/plain;q=0.9"}
    method = str(ctx.config.get("method", "POST")).upper()
    payload = {"query": str(args.get("query", ""))[:2000]}
    timeout = _timeout(ctx.config.get("timeout", 10))
    limits = OutboundLimits(
        connect_seconds=min(timeout, 5.0),
        read_seconds=timeout,
        total_seconds=2 * timeout,
        max_response_bytes=HTTP_TOOL_MAX_RESPONSE_BYTES,
    )

    def send(extra_headers: dict[str, str]) -> httpx2.Response:
        try:
            with outbound_client(limits=limits) as client:
                return client.request(
                    method,
                    url,
                    json=payload if method != "GET" else None,
                    params=payload if method == "GET" else None,
                    headers={**headers, **extra_headers},
                )
        except OutboundError as exc:
            raise ToolError(exc.message) from None
        except httpx2.TooManyRedirects:
            raise ToolError("the endpoint redirected too many times") from None
        except httpx2.TimeoutException:
            raise ToolError("the endpoint did not answer in time") from None
        except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
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
