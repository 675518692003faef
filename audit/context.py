"""Who and where a request comes from, for audit events (set by RequestInfoMiddleware)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestInfo:
    request_id: str
    ip: str | None
    user_agent: str


_request_info: ContextVar[RequestInfo | None] = ContextVar("request_info", default=None)


def current_request_info() -> RequestInfo | None:
    return _request_info.get()


def set_request_info(info: RequestInfo | None) -> object:
    return _request_info.set(info)


def reset_request_info(token: object) -> None:
    _request_info.reset(token)  # type: ignore[arg-type]
