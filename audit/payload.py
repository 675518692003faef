"""What an audit event says about a request's payload: a SHA-256 of its canonical JSON, with
secrets replaced first, so the log can prove what was sent without holding what was sent."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from django.http import HttpRequest
from django.http.request import RawPostDataException

from audit.verify_export import canonical_json

SECRET_KEYS = re.compile(
    r"pass(word|phrase)?|secret|token|api[_-]?key|^key$|authorization|credential|cookie|otp",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            str(k): REDACTED if SECRET_KEYS.search(str(k)) else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return json_safe(value)


def json_safe(value: Any) -> Any:
    """Values canonical JSON can carry exactly: floats and anything else become strings."""
    if value is None or isinstance(value, bool | int | str):
        return value.replace("\x00", "") if isinstance(value, str) else value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def payload_sha256(request: HttpRequest) -> str:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return ""
    content_type = request.content_type or ""
    try:
        if content_type == "application/json":
            raw = request.body
            if not raw:
                return ""
            data: Any = json.loads(raw)
        elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            # Field values only; uploaded files are described by the event itself.
            data = {k: v if len(v) > 1 else v[0] for k, v in request.POST.lists()}
            data.pop("csrfmiddlewaretoken", None)
        else:
            raw = request.body
            return hashlib.sha256(raw).hexdigest() if raw else ""
    except (ValueError, RawPostDataException):
        return ""
    return payload_digest(data)


def payload_digest(data: Any) -> str:
    """SHA-256 of the canonical JSON of `data`, secret fields redacted first."""
    return hashlib.sha256(canonical_json(redact(data)).encode()).hexdigest()
