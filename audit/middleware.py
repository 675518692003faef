"""Give every request an id (echoed as X-Request-ID) and remember its origin for audit."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audit.context import RequestInfo, reset_request_info, set_request_info
from audit.payload import payload_sha256

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class RequestInfoMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # A load balancer's id is kept when it looks like one; anything else is replaced.
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        if request.content_type == "application/json":
            # Read the (size-limited) body now, while it can still be read twice.
            with contextlib.suppress(Exception):
                request.body  # noqa: B018
        token = set_request_info(
            RequestInfo(
                request_id=request_id,
                ip=request.META.get("REMOTE_ADDR") or None,
                user_agent=request.headers.get("User-Agent", "")[:400],
                payload_digest=lambda: payload_sha256(request),
            )
        )
        try:
            response = self.get_response(request)
        finally:
            reset_request_info(token)
        response["X-Request-ID"] = request_id
        return response
