"""Keep secrets out of logs and error reports.

`scrub` removes values under secret-looking keys (password, token, secret, api_key,
authorization, cookie, ...) from nested data, and masks strings that look like credentials
(provider keys, bearer tokens, Playbook API keys). Sentry calls `before_send` on every event;
logging runs `SecretsFilter` on every record. The credential vault additionally strips the
exact secret from any exception raised while it is in use.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"
SECRET_KEYS = re.compile(
    r"pass(word|phrase)?|secret|token|api[_-]?key|^key$|authorization|credential|cookie|"
    r"session|otp|private|signature|dsn",
    re.IGNORECASE,
)
SECRET_VALUES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{16,}"  # OpenAI-style keys
    r"|sk-ant-[A-Za-z0-9_\-]{16,}"  # Anthropic
    r"|pbk_[0-9a-f]{32}_[A-Za-z0-9]{10}\.[A-Za-z0-9_\-]{20,}"  # Playbook API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._\-~+/]{16,}=*"  # bearer tokens, JWTs
    r"|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"  # bare JWTs
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9*]+)"  # Stripe keys as its errors quote them (masked)
)


def scrub_text(text: str) -> str:
    return SECRET_VALUES.sub(REDACTED, text)


def scrub(value: Any, depth: int = 0) -> Any:
    if depth > 12:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_KEYS.search(k) else scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(scrub(v, depth + 1) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """Sentry's before_send: the whole event, scrubbed (request, extra, exception values,
    breadcrumbs, local variables if any were captured)."""
    cleaned: dict[str, Any] = scrub(event)
    return cleaned


class SecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc)
            if scrub_text(text) != text:
                # Format the traceback now, scrubbed, instead of letting the handler do it.
                record.exc_text = scrub_text(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True
