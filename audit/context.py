"""Who and where a request comes from, for audit events (set by RequestInfoMiddleware)."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class RequestInfo:
    request_id: str
    ip: str | None
    user_agent: str
    # Computed on first use: sha256 of the request's canonical payload, secrets redacted.
    payload_digest: Callable[[], str] = field(default=lambda: "", repr=False)
    _digest: str | None = field(default=None, repr=False)

    @property
    def payload_sha256(self) -> str:
        if self._digest is None:
            self._digest = self.payload_digest()
        return self._digest


_request_info: ContextVar[RequestInfo | None] = ContextVar("request_info", default=None)


def current_request_info() -> RequestInfo | None:
    return _request_info.get()


def set_request_info(info: RequestInfo | None) -> object:
    return _request_info.set(info)


def reset_request_info(token: object) -> None:
    _request_info.reset(token)  # type: ignore[arg-type]
