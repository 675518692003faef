"""The `guards` cache alias (settings.GUARDS_CACHE): the Redis that holds the support admin's
login lockouts (accounts.lockouts) and the request counters (config.throttling).

Both need what Django's cache API lacks: a sorted set of lockouts, and a counter that is
created, incremented and read with its time left in one round trip. `guard_redis()` is the
redis-py client behind the alias (same connection pool, timeouts and server) and
`guard_key()` names a key exactly as the alias does (its KEY_PREFIX and version), so the
cache API (django-axes uses it) and raw commands see the same keys.
"""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.exceptions import ImproperlyConfigured


def guard_cache() -> BaseCache:
    return caches[settings.GUARDS_CACHE]


def guard_redis() -> redis.Redis:
    # Django's RedisCache keeps its redis-py client factory in `_cache` (RedisCacheClient).
    backend: Any = getattr(guard_cache(), "_cache", None)
    if backend is None or not hasattr(backend, "get_client"):
        raise ImproperlyConfigured(
            f"The cache alias {settings.GUARDS_CACHE!r} (GUARDS_CACHE) must use "
            "django.core.cache.backends.redis.RedisCache."
        )
    client: redis.Redis = backend.get_client(write=True)
    return client


def guard_key(name: str) -> str:
    return guard_cache().make_key(name)
