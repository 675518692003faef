"""Rate limits and spend caps, enforced atomically in Redis by one Lua script per call.

Before every model or tool call, `reserve()` runs ADMIT (EVALSHA, reloaded on NOSCRIPT),
which in one atomic step:
  1. slides the one-minute windows (sorted sets) for requests of the tenant and of the user,
     and for the tenant's tokens;
  2. refuses when a window is full, with the milliseconds until it has room (-> 429);
  3. refuses when the period's settled spend + open reservations + this call's estimate would
     pass the hard cap (-> the run halts);
  4. otherwise records the request and reserves the estimated cost.
After the call, `settle()` runs SETTLE: the reservation is released and the actual cost added.
A call of an agent run is admitted under a request id of its own (run and step): admitted again
(the run retried, or redelivered after its worker died), it keeps the reservation it holds.

Every key of one call carries the `{tenant_id}` hash tag, so the scripts run unchanged on
Redis Cluster. PostgreSQL (UsageEvent.cost_microdollars) is the source of truth: when the
period's spend key is missing (Redis restarted or flushed), it is rebuilt from PostgreSQL
before the call is admitted. A settlement that could not be written (Redis went down after the
call) is replayed at the process's next admission for the tenant, at most once in effect.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.db.models import Sum

from billing.models import PlanLimit, UsageEvent
from tenants.context import require_tenant_id
from tenants.models import Tenant

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
RESERVATION_TTL_S = 3600

ADMIT = """
-- KEYS: 1 tenant requests zset, 2 user requests zset, 3 tenant tokens per second (hash),
--       4 period spend (settled), 5 period reserved, 6 reservation hash
-- ARGV: 1 now_ms, 2 window_ms, 3 tenant rpm, 4 user rpm, 5 tenant tpm, 6 est tokens,
--       7 est cost, 8 soft cap, 9 hard cap, 10 request id, 11 period ttl s, 12 reservation ttl s
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local since = now - window
local id = ARGV[10]
if redis.call('EXISTS', KEYS[4]) == 0 then
  return {'cold', 0}
end
-- The same call admitted again (its run is retried, or was redelivered after its worker died):
-- it keeps the reservation it holds and is counted once.
if redis.call('HEXISTS', KEYS[6], id) == 1 then
  local held = tonumber(redis.call('GET', KEYS[4]) or '0')
  return {'ok', held + tonumber(redis.call('GET', KEYS[5]) or '0')}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', since)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', since)
local function wait_for(key)
  local oldest = redis.call('ZRANGE', KEYS[key], 0, 0, 'WITHSCORES')
  if oldest[2] then return math.max(1, tonumber(oldest[2]) + window - now) end
  return window
end
local rpm, user_rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
  return {'rate_limited', wait_for(1)}
end
if user_rpm > 0 and redis.call('ZCARD', KEYS[2]) >= user_rpm then
  return {'rate_limited', wait_for(2)}
end
local tokens = tonumber(ARGV[6])
-- Tokens: one hash field per second (at most 60 live fields), so this stays O(60).
local second = math.floor(now / 1000)
local oldest_second = nil
local used = 0
local buckets = redis.call('HGETALL', KEYS[3])
for i = 1, #buckets, 2 do
  local s = tonumber(buckets[i])
  if s * 1000 <= since then
    redis.call('HDEL', KEYS[3], buckets[i])
  else
    used = used + tonumber(buckets[i + 1])
    if oldest_second == nil or s < oldest_second then oldest_second = s end
  end
end
if tpm > 0 and used + tokens > tpm then
  local wait = window
  if oldest_second then wait = math.max(1, oldest_second * 1000 + window - now) end
  return {'rate_limited', wait}
end
local cost = tonumber(ARGV[7])
local spent = tonumber(redis.call('GET', KEYS[4]) or '0')
local reserved = tonumber(redis.call('GET', KEYS[5]) or '0')
local hard = tonumber(ARGV[9])
if hard > 0 and spent + reserved + cost > hard then
  return {'hard_cap', spent + reserved}
end
redis.call('ZADD', KEYS[1], now, id)
redis.call('ZADD', KEYS[2], now, id)
redis.call('HINCRBY', KEYS[3], second, tokens)
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[2], window)
redis.call('PEXPIRE', KEYS[3], window + 1000)
redis.call('INCRBY', KEYS[5], cost)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[11]))
-- What settlement needs: the reserved cost, and where the token estimate was counted.
redis.call('HSET', KEYS[6], id, cost .. ':' .. second .. ':' .. tokens)
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[12]))
local soft = tonumber(ARGV[8])
if soft > 0 and spent + reserved + cost >= soft then
  return {'ok_soft_cap', spent + reserved + cost}
end
return {'ok', spent + reserved + cost}
"""

SETTLE = """
-- KEYS: 1 period spend, 2 period reserved, 3 reservation hash, 4 tenant tokens per second
-- ARGV: 1 request id, 2 actual cost, 3 actual tokens, 4 period ttl s,
--       5 '1' when replaying a settlement that may have been applied already
local entry = redis.call('HGET', KEYS[3], ARGV[1])
if not entry and ARGV[5] == '1' then
  return redis.call('GET', KEYS[1])
end
redis.call('HDEL', KEYS[3], ARGV[1])
if entry then
  local reserved, second, estimated = string.match(entry, '^(%d+):(%d+):(%d+)$')
  reserved = tonumber(reserved)
  if reserved > 0 then
    local left = redis.call('DECRBY', KEYS[2], reserved)
    if left < 0 then redis.call('SET', KEYS[2], 0) end
  end
  -- Replace the token estimate with the real count, in the second it was counted in.
  if redis.call('HEXISTS', KEYS[4], second) == 1 then
    local after = redis.call('HINCRBY', KEYS[4], second, tonumber(ARGV[3]) - tonumber(estimated))
    if after < 0 then redis.call('HSET', KEYS[4], second, 0) end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBY', KEYS[1], tonumber(ARGV[2]))
end
return redis.call('GET', KEYS[1])
"""


class LimiterUnavailable(Exception):
    """Redis cannot be reached: agent runs fail closed (HTTP 503)."""


class RateLimited(Exception):
    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("Too many requests.")
        self.retry_after = max(1, -(-int(retry_after_ms) // 1000))


class HardCapReached(Exception):
    """The tenant's spend for the period would pass its hard cap."""


@dataclass(frozen=True)
class Reservation:
    request_id: str
    tenant_id: str
    period: str
    estimated_cost: int
    soft_cap_reached: bool


def period_of(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return f"{moment:%Y-%m}"


def period_start(period: str) -> datetime:
    year, month = (int(x) for x in period.split("-"))
    return datetime(year, month, 1, tzinfo=UTC)


_client: redis.Redis | None = None
_scripts: dict[str, Any] = {}
# Settlements this process could not write (Redis went down after the call), per tenant:
# replayed before its next admission for that tenant (see `settle`).
_unsettled: dict[str, list[tuple[Reservation, int, int]]] = {}


def client() -> redis.Redis:
    global _client
    if _client is None:
        # A blocking pool: a burst of threads waits for a connection instead of failing.
        pool = redis.BlockingConnectionPool.from_url(
            settings.LIMITER_REDIS_URL,
            max_connections=settings.LIMITER_MAX_CONNECTIONS,
            timeout=2,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        _client = redis.Redis(connection_pool=pool)
    return _client


def reset_client() -> None:
    global _client
    _client = None
    _scripts.clear()


def _script(name: str, source: str) -> Any:
    # redis-py's Script object runs EVALSHA and reloads the script on NOSCRIPT.
    if name not in _scripts:
        _scripts[name] = client().register_script(source)
    return _scripts[name]


def keys(tenant_id: str, user_id: object, period: str) -> dict[str, str]:
    tag = f"{{{tenant_id}}}"
    return {
        "tenant_requests": f"limit:{tag}:requests",
        "user_requests": f"limit:{tag}:user:{user_id or 'none'}:requests",
        "tenant_tokens": f"limit:{tag}:tokens",
        "spend": f"spend:{tag}:{period}",
        "reserved": f"spend:{tag}:{period}:reserved",
        "reservations": f"spend:{tag}:{period}:reservations",
    }


def settled_spend_from_database(period: str) -> int:
    """The period's spend according to PostgreSQL (the source of truth)."""
    total = UsageEvent.objects.filter(created_at__gte=period_start(period)).aggregate(
        total=Sum("cost_microdollars")
    )["total"]
    return int(total or 0)


def rebuild_spend(tenant_id: str, period: str) -> int:
    """Write the period's settled spend into Redis from PostgreSQL (if no one else did)."""
    spend = settled_spend_from_database(period)
    client().set(keys(tenant_id, None, period)["spend"], spend, nx=True, ex=period_ttl())
    return spend


def period_ttl() -> int:
    return 40 * 24 * 3600


def limits_for() -> PlanLimit:
    """The current tenant's plan limits: from the entitlement registry's Redis cache
    (invalidated when a plan's limits or the tenant's plan change), else from PostgreSQL."""
    from agents import registry

    try:
        resolved = registry.resolve()
    except redis.RedisError:  # the cache's Redis may be down while the limiter's is up
        plan = Tenant.objects.filter(id=require_tenant_id()).values_list("plan", flat=True).first()
        return PlanLimit.objects.filter(plan=plan).first() or PlanLimit(plan=plan or "")
    return PlanLimit(plan=resolved.plan, **resolved.limits)


def reserve(
    *,
    user_id: object,
    estimated_tokens: int,
    estimated_cost: int,
    request_id: str | None = None,
) -> Reservation:
    """Admit one call for the current tenant, or raise RateLimited / HardCapReached /
    LimiterUnavailable. A `request_id` admitted before and not settled yet is admitted again
    on its open reservation."""
    tenant_id = str(require_tenant_id())
    period = period_of()
    limit = limits_for()
    k = keys(tenant_id, user_id, period)
    request_id = request_id or uuid.uuid4().hex
    args = [
        int(time.time() * 1000),
        WINDOW_MS,
        limit.requests_per_minute,
        limit.user_requests_per_minute,
        limit.tokens_per_minute,
        max(0, estimated_tokens),
        max(0, estimated_cost),
        limit.soft_cap_microdollars,
        limit.hard_cap_microdollars,
        request_id,
        period_ttl(),
        RESERVATION_TTL_S,
    ]
    order = [
        "tenant_requests",
        "user_requests",
        "tenant_tokens",
        "spend",
        "reserved",
        "reservations",
    ]
    try:
        _replay_settlements(tenant_id)
        for _attempt in range(2):
            verdict, value = _script("admit", ADMIT)(keys=[k[n] for n in order], args=args)
            verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
            if verdict != "cold":
                break
            rebuild_spend(tenant_id, period)  # cold cache: rebuild from PostgreSQL, retry
    except redis.RedisError as exc:
        raise LimiterUnavailable(str(type(exc).__name__)) from None
    if verdict == "rate_limited":
        raise RateLimited(int(value))
    if verdict == "hard_cap":
        raise HardCapReached()
    return Reservation(
        request_id=request_id,
        tenant_id=tenant_id,
        period=period,
        estimated_cost=estimated_cost,
        soft_cap_reached=verdict == "ok_soft_cap",
    )


def _settle(reservation: Reservation, actual_cost: int, actual_tokens: int, replay: bool) -> None:
    k = keys(reservation.tenant_id, None, reservation.period)
    _script("settle", SETTLE)(
        keys=[k["spend"], k["reserved"], k["reservations"], k["tenant_tokens"]],
        args=[
            reservation.request_id,
            max(0, actual_cost),
            max(0, actual_tokens),
            period_ttl(),
            "1" if replay else "0",
        ],
    )


def settle(reservation: Reservation, *, actual_cost: int, actual_tokens: int) -> None:
    try:
        _settle(reservation, actual_cost, actual_tokens, replay=False)
    except redis.RedisError:
        # The usage event in PostgreSQL is written all the same. The settlement is replayed
        # at this process's next admission for the tenant: it releases the reservation and
        # adds the cost if Redis kept them (a restart from its append-only file), and does
        # nothing if it was applied after all or Redis lost them (then the spend is rebuilt
        # from PostgreSQL, like any missing spend).
        _unsettled.setdefault(reservation.tenant_id, []).append(
            (reservation, actual_cost, actual_tokens)
        )
        logger.warning("could not settle reservation %s in Redis", reservation.request_id)


def _replay_settlements(tenant_id: str) -> None:
    pending = _unsettled.pop(tenant_id, [])
    while pending:
        reservation, cost, tokens = pending[0]
        try:
            _settle(reservation, cost, tokens, replay=True)
        except redis.RedisError:
            _unsettled.setdefault(tenant_id, []).extend(pending)
            raise
        pending.pop(0)


def release(reservation: Reservation) -> None:
    """The call did not happen (or failed before costing anything): give the reservation back."""
    settle(reservation, actual_cost=0, actual_tokens=0)


def check_request(*, user_id: object) -> None:
    """Admission of a request that will start an agent run: rate limits only (no cost yet)."""
    reservation = reserve(user_id=user_id, estimated_tokens=0, estimated_cost=0)
    release(reservation)


def rebuild_ledger(tenant_id: str) -> int:
    """`manage.py rebuild_ledger`: replace the period's Redis spend with PostgreSQL's."""
    period = period_of()
    spend = settled_spend_from_database(period)
    k = keys(tenant_id, None, period)
    pipe = client().pipeline()
    pipe.set(k["spend"], spend, ex=period_ttl())
    pipe.delete(k["reserved"], k["reservations"])
    pipe.execute()
    return spend
