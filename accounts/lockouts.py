"""Brute-force protection of the support admin's login: django-axes with its cache handler.

At /admin/ (the login's password step and its second factor, accounts.admin.SupportLoginForm,
and the enrolment's password step), every failed attempt counts against the pair (username
as typed, client IP: config.client_ip) in Redis, the `guards` cache. At
ADMIN_LOGIN_FAILURE_LIMIT failures the pair is locked for ADMIN_LOGIN_LOCKOUT_SECONDS from
that failure: every attempt of that username from that address is refused, the right password
and code included, with a page that says until when (HTTP 429 with Retry-After); attempts
during the lock neither count nor extend it. Failures are forgotten a cool-off after the last
one, and a successful login clears them. Other usernames, and the same username from another
address, are unaffected: nobody locks a colleague out from elsewhere.

Logins anywhere else (the OIDC callback, the development provider's /idp/login/) are neither
counted nor refused: the handler ignores requests outside the admin.

Axes' cache handler keeps only counters, under hashed keys; each lockout is therefore also
written here (a sorted set by end time, and an entry per lockout) with what staff need to
recognise it, for /admin/lockouts/, where staff list and clear them. Platform staff have no
tenant audit log (as for backup codes): lockouts and clearings go to this module's logger.
Redis unreachable: the admin login fails closed (the "briefly unavailable" page), as it must
without its sessions anyway.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from axes.handlers.cache import AxesCacheHandler
from axes.helpers import get_client_cache_keys, get_client_username, get_cool_off
from django.contrib.auth.signals import user_login_failed
from django.core.cache import BaseCache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from accounts.guard_store import guard_cache, guard_key, guard_redis

logger = logging.getLogger(__name__)

INDEX = "admin-lockouts"  # sorted set: lockout id -> when it ends (epoch seconds)
ENTRY = "admin-lockout:"  # + lockout id: JSON of who, from where, since and until when


@dataclass(frozen=True)
class Lockout:
    id: str  # axes' counter key of the pair: "axes-<sha256 of username and address>"
    username: str
    ip_address: str
    locked_at: datetime
    until: datetime
    failures: int

    @property
    def seconds_left(self) -> int:
        return max(0, math.ceil((self.until - timezone.now()).total_seconds()))


def _cool_off(request: HttpRequest | None) -> timedelta:
    cool_off = get_cool_off(request)
    if not isinstance(cool_off, timedelta):
        raise TypeError("AXES_COOLOFF_TIME must be a timedelta (ADMIN_LOGIN_LOCKOUT_SECONDS).")
    return cool_off


class AdminLoginLockoutHandler(AxesCacheHandler):
    """Axes' cache handler, for the support admin only, remembering each lockout."""

    def __init__(self) -> None:
        # No cache object kept: the alias is looked up at each use, so a changed CACHES
        # setting (the tests give every test a key space of its own) takes effect.
        pass

    @property
    def cache(self) -> BaseCache:
        return guard_cache()

    def user_login_failed(
        self, sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
    ) -> None:
        if request is None or not self.is_admin_request(request):
            return
        super().user_login_failed(sender, credentials, request, **kwargs)
        counted = getattr(request, "axes_failures_since_start", None)
        if getattr(request, "axes_locked_out", False) and counted is not None:
            # This failure reached the limit (attempts during a lock are not counted).
            _remember_lockout(request, credentials, failures=int(counted))

    def user_logged_in(self, sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
        if request is not None and self.is_admin_request(request):
            super().user_logged_in(sender, request, user, **kwargs)

    def user_logged_out(self, sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
        if request is not None and self.is_admin_request(request):
            super().user_logged_out(sender, request, user, **kwargs)


def second_factor_failed(request: HttpRequest, username: str) -> None:
    """A wrong one-time code (or backup code) after the right password: counted like a
    wrong password, through the signal axes listens to."""
    user_login_failed.send(sender=__name__, credentials={"username": username}, request=request)


def _remember_lockout(request: Any, credentials: dict[str, Any], *, failures: int) -> None:
    lockout_id = get_client_cache_keys(request, credentials)[0]
    username = str(get_client_username(request, credentials) or "")
    address = str(request.axes_ip_address or "")
    now = timezone.now()
    cool_off = _cool_off(request)
    until = now + cool_off
    entry = {
        "username": username[:150],
        "ip_address": address,
        "locked_at": now.isoformat(),
        "until": until.isoformat(),
    }
    seconds = max(1, math.ceil(cool_off.total_seconds()))
    index = guard_key(INDEX)
    with guard_redis().pipeline(transaction=True) as pipe:
        pipe.set(guard_key(ENTRY + lockout_id), json.dumps(entry), ex=seconds)
        pipe.zadd(index, {lockout_id: until.timestamp()})
        pipe.zremrangebyscore(index, "-inf", now.timestamp())
        pipe.expire(index, seconds)
        pipe.execute()
    logger.warning(
        "support admin login locked for username %r from %s until %s, after %d failed attempts",
        username[:150],
        address,
        until.isoformat(timespec="seconds"),
        failures,
    )


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def current_lockouts() -> list[Lockout]:
    """Every lockout still in force, the most recent first."""
    client = guard_redis()
    index = guard_key(INDEX)
    now = timezone.now().timestamp()
    client.zremrangebyscore(index, "-inf", now)
    ids = [_text(raw) for raw in client.zrangebyscore(index, now, "+inf")]
    if not ids:
        return []
    entries = client.mget([guard_key(ENTRY + lockout_id) for lockout_id in ids])
    counters = client.mget([guard_key(lockout_id) for lockout_id in ids])  # axes' counts
    lockouts = []
    for lockout_id, raw_entry, raw_count in zip(ids, entries, counters, strict=True):
        if raw_entry is None or raw_count is None:  # cleared, or its counter expired
            continue
        entry = json.loads(raw_entry)
        lockouts.append(
            Lockout(
                id=lockout_id,
                username=entry["username"],
                ip_address=entry["ip_address"],
                locked_at=datetime.fromisoformat(entry["locked_at"]),
                until=datetime.fromisoformat(entry["until"]),
                failures=int(raw_count),
            )
        )
    return sorted(lockouts, key=lambda lockout: lockout.locked_at, reverse=True)


def clear_lockout(lockout_id: str, *, staff: Any) -> Lockout | None:
    """End a lockout now (its failures forgotten); None when it had already ended."""
    lockout = next((found for found in current_lockouts() if found.id == lockout_id), None)
    if lockout is None:
        return None
    with guard_redis().pipeline(transaction=True) as pipe:
        pipe.delete(guard_key(lockout.id), guard_key(ENTRY + lockout.id))
        pipe.zrem(guard_key(INDEX), lockout.id)
        pipe.execute()
    logger.warning(
        "staff %s (user %s) cleared the support admin login lockout of username %r from %s",
        staff.get_username(),
        staff.pk,
        lockout.username,
        lockout.ip_address,
    )
    return lockout


def _lockout_until(request: Any, credentials: dict[str, Any] | None) -> datetime:
    lockout_id = get_client_cache_keys(request, credentials)[0]
    raw = guard_redis().get(guard_key(ENTRY + lockout_id))
    if raw is not None:
        return datetime.fromisoformat(json.loads(raw)["until"])
    # Locked before its entry was written (or the entry was lost): at most a cool-off.
    return timezone.now() + _cool_off(request)


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """The page a locked-out login gets (AXES_LOCKOUT_CALLABLE): 429, until when, why."""
    until = _lockout_until(request, credentials)
    seconds = max(1, math.ceil((until - timezone.now()).total_seconds()))
    response = render(
        request,
        "admin/login_locked.html",
        {
            "title": "Sign-in paused",
            "site_header": "Playbook support",
            "site_title": "Playbook support",
            "until": until,
            "minutes": math.ceil(seconds / 60),
            "login_url": reverse("admin:login"),
        },
        status=429,
    )
    response["Retry-After"] = str(seconds)
    add_never_cache_headers(response)
    return response
