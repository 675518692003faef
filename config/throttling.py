"""Request rates per credential and per client address, counted in Redis (the `guards` cache).

- The REST API per credential (`CredentialRateThrottle`, DRF's DEFAULT_THROTTLE_CLASSES): an
  API key by its id, a person (bearer JWT or session) by their user id; never by a secret.
- Per client address (config.throttling_middleware, before the tenant is entered): the login
  pages, the invitation page, the development provider, and API requests that carry no
  verified credential (none, or one refused), each scope with its own count. An IPv6 client
  is counted by its /64 (config.client_ip).

Refused: 429 with Retry-After, the API's `rate_limited` JSON error or, for pages, the "Too many
requests" page. Rates are settings.THROTTLE_RATES (`120/min`), read at each request, so
`override_settings(THROTTLE_RATES=...)` works (DRF's SimpleRateThrottle would read its rates
once, when its class is defined).

Each count is a window that opens at its first request: one Redis transaction opens it
(SET NX EX), counts (INCR) and reads the time it has left (PTTL), which is the Retry-After.
Two windows back to back can pass up to twice the rate within one period, the usual price of
fixed windows. These are not the model-call limits of billing/limiter.py (per tenant and
user, in its own Redis, failing closed).

Redis unreachable: the request goes through uncounted and a warning is logged (fail open).
Rates protect capacity; refusing every request would turn a Redis outage into a full one.
The admin login's lockout (accounts.lockouts) fails closed instead.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Any

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from accounts.api_keys import ApiKeyPrincipal
from accounts.guard_store import guard_key, guard_redis
from config.env import Rate, parse_rate

if TYPE_CHECKING:
    # Only a type: rest_framework.views imports this module while defining APIView.
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def _rate(value: str) -> Rate:
    return parse_rate(value)


def count_request(scope: str, who: str) -> int | None:
    """Count one request of `who` in `scope`: None if it is within the rate, else the
    seconds until the window has room again."""
    rate = _rate(settings.THROTTLE_RATES[scope])
    key = guard_key(f"throttle:{scope}:{who}")
    try:
        with guard_redis().pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=rate.seconds, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, left_ms = pipe.execute()
    except RedisError as exc:
        logger.warning(
            "request rate (%s) not checked, request let through: Redis unavailable (%s)",
            scope,
            type(exc).__name__,
        )
        return None
    if int(count) <= rate.requests:
        return None
    return max(1, math.ceil(int(left_ms) / 1000)) if int(left_ms) > 0 else rate.seconds


def credential_of(user: Any) -> str | None:
    """What a signed-in principal is counted as: its API key's id or its user id."""
    if not getattr(user, "is_authenticated", False):
        return None
    if isinstance(user, ApiKeyPrincipal):
        return f"api_key:{user.api_key_id}"
    return f"user:{user.pk}"


class CredentialRateThrottle(BaseThrottle):
    """THROTTLE_RATES["api_credential"] per API key or person, across every API endpoint."""

    scope = "api_credential"

    def __init__(self) -> None:
        self.retry_after: int | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        credential = credential_of(request.user)
        if credential is None:
            return True  # counted per address by config.throttling_middleware
        self.retry_after = count_request(self.scope, credential)
        return self.retry_after is None

    def wait(self) -> float | None:
        return self.retry_after
