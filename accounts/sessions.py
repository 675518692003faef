"""Django sessions in Redis (settings.SESSION_ENGINE), never in the database.

Django's cache engine on the `sessions` cache alias (SESSION_REDIS_URL), with one change: a
Redis it cannot reach is an error, not an empty session. Django's engine reads any error as
"no session", so everyone signed in would look signed out for the outage and the login page
would fail writing its state; here the request answers 503 "briefly unavailable"
(config.views.server_error) and people are still signed in once Redis is back.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends.cache import SessionStore as CacheSessionStore
from django.core.cache import BaseCache


class SessionStore(CacheSessionStore):
    _cache: BaseCache  # set by Django's __init__ (caches[SESSION_CACHE_ALIAS])

    def load(self) -> dict[str, Any]:
        session_data = self._cache.get(self.cache_key)
        if session_data is not None:
            return dict(session_data)
        self._session_key = None
        return {}

    async def aload(self) -> dict[str, Any]:
        session_data = await self._cache.aget(await self.acache_key())
        if session_data is not None:
            return dict(session_data)
        self._session_key = None
        return {}
