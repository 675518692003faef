"""Stripe metered billing: each tenant is a Stripe customer, and every usage event that costs
money is sent once to a Stripe billing meter from the MeterEvent outbox.

Meter set-up at Stripe (once, in the Dashboard or the API): a meter with event name
`settings.STRIPE_METER_EVENT_NAME` (default `playbook_usage`), aggregation **sum**, customer
mapping `stripe_customer_id` and value key `value` (the defaults). The value of each event is
the usage event's cost in **micro-dollars**, so the metered price is $1 per 1,000,000 units:
`unit_amount_decimal=0.0001` (cents per unit), or `transform_quantity[divide_by]=1000000` with
`unit_amount=100`.

Sending (`send_due_meter_events`, inside a tenant context): due PENDING / FAILED rows are
locked with `SELECT … FOR UPDATE SKIP LOCKED` (two senders never take the same row), each is
POSTed to /v1/billing/meter_events with `identifier` = the usage event id, and marked SENT. A
Stripe error marks the row FAILED with a backoff of 30 s · 2^n (n = earlier failures), at most
one hour. Stripe de-duplicates on `identifier`: a send whose first attempt reached Stripe but
whose answer was lost is answered "already exists" on retry, which counts as sent, so a usage
event is never billed twice. Each attempt carries its own Idempotency-Key, because Stripe
replays the stored answer of a key (a 500 too) for 24 hours.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import stripe
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from billing.models import MeterEvent, StripeCustomer
from config.scrubbing import scrub_text
from tenants.context import require_tenant_id
from tenants.models import Tenant

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 3600
CUSTOMER_KEY_TTL_SECONDS = 24 * 3600  # how long Stripe keeps an idempotent answer
# What Stripe answers for a meter event whose identifier it already has. The error code is not
# documented for the v1 endpoint; these codes, or an invalid-request error about the identifier
# that says it already exists or is a duplicate, are taken as "already recorded".
DUPLICATE_CODES = frozenset({"resource_already_exists", "duplicate_meter_event"})
DISABLED_MESSAGE = "Stripe metering is disabled: STRIPE_SECRET_KEY is not set."
_disabled_logged = False


class MeteringDisabled(Exception):
    """STRIPE_SECRET_KEY is not set."""


@dataclass
class SendResult:
    sent: int = 0
    duplicates: int = 0  # already at Stripe (sent before): marked sent, not billed again
    failed: int = 0
    waiting: int = 0  # due rows left for the next run (batch full, or stopped on an error)
    disabled: bool = False
    customer_created: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def metering_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def log_disabled_once() -> None:
    global _disabled_logged
    if not _disabled_logged:
        logger.warning("%s Meter events stay in the outbox until it is.", DISABLED_MESSAGE)
        _disabled_logged = True


def stripe_client() -> stripe.StripeClient:
    """The official SDK's client. No SDK-level retries: the outbox retries, with backoff."""
    if not metering_enabled():
        raise MeteringDisabled(DISABLED_MESSAGE)
    return stripe.StripeClient(
        api_key=settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
    )


def redact(text: str) -> str:
    """No secret key in a log line or a stored error, whatever Stripe or the SDK said."""
    key = settings.STRIPE_SECRET_KEY
    if key:
        text = text.replace(key, "[redacted]")
    return scrub_text(text)


def describe(exc: stripe.StripeError) -> str:
    status = f"HTTP {exc.http_status}" if exc.http_status else "no response"
    code = f", {exc.code}" if exc.code else ""
    message = exc.user_message or type(exc).__name__
    return redact(f"{type(exc).__name__} ({status}{code}): {message}")[:500]


def is_duplicate(exc: stripe.StripeError) -> bool:
    if not isinstance(exc, stripe.InvalidRequestError):
        return False
    if exc.code in DUPLICATE_CODES:
        return True
    message = (exc.user_message or "").lower()
    about_identifier = exc.param == "identifier" or "identifier" in message
    return about_identifier and ("already exist" in message or "duplicate" in message)


def backoff(failures: int) -> timedelta:
    """Delay before the next attempt after `failures` failed attempts (1, 2, …)."""
    exponent = min(max(failures - 1, 0), 12)
    return timedelta(seconds=min(BACKOFF_BASE_SECONDS * 2**exponent, BACKOFF_CAP_SECONDS))


def _customer_key_suffix(tenant_id: object) -> str:
    try:
        failures = int(cache.get(f"stripe-customer-failures:{{{tenant_id}}}") or 0)
    except Exception:  # the cache is Redis: without it, the plain key
        failures = 0
    return f"-{failures}" if failures else ""


def _count_customer_failure(tenant_id: object) -> None:
    key = f"stripe-customer-failures:{{{tenant_id}}}"
    try:
        cache.add(key, 0, CUSTOMER_KEY_TTL_SECONDS)
        cache.incr(key)
    except Exception:
        logger.warning("tenant %s: could not count a failed customer creation", tenant_id)


def ensure_customer(client: stripe.StripeClient | None = None) -> tuple[str, bool]:
    """The current tenant's Stripe customer id, created at Stripe first if there is none.
    Returns (customer id, created).

    The Idempotency-Key is derived from the tenant id, so a creation that reached Stripe but
    whose row was never stored (lost answer, crash, rollback) returns the same customer when
    it is repeated within Stripe's 24 hours. Stripe also replays a stored 5xx for that key, so
    after an answered server error the key gets a suffix (a failure count kept in the cache
    for 24 hours); a timeout or connection error keeps the key (Stripe may have the customer).
    """
    tenant_id = require_tenant_id()
    existing = StripeCustomer.objects.first()
    if existing is not None:
        return existing.customer_id, False
    tenant = Tenant.objects.get(id=tenant_id)
    client = client or stripe_client()
    try:
        customer = client.v1.customers.create(
            params={"name": tenant.name, "metadata": {"tenant_id": str(tenant_id)}},
            options={
                "idempotency_key": f"playbook-customer-{tenant_id}{_customer_key_suffix(tenant_id)}"
            },
        )
    except stripe.StripeError as exc:
        if (exc.http_status or 0) >= 500:
            _count_customer_failure(tenant_id)
        raise
    # Two senders may race here: both get the same customer (same key), one row is kept.
    row, created = StripeCustomer.objects.get_or_create(defaults={"customer_id": customer.id})
    if row.customer_id != customer.id:
        logger.warning(
            "tenant %s: Stripe returned customer %s, keeping %s", tenant_id, customer.id, row
        )
    elif created:
        logger.info("tenant %s: Stripe customer %s created", tenant_id, customer.id)
    return row.customer_id, created


def due_meter_events(now: datetime | None = None) -> int:
    return MeterEvent.objects.filter(
        status__in=[MeterEvent.Status.PENDING, MeterEvent.Status.FAILED],
        next_attempt_at__lte=now or timezone.now(),
    ).count()


def _mark_sent(row: MeterEvent, now: datetime) -> None:
    row.status = MeterEvent.Status.SENT
    row.sent_at = now
    row.last_error = ""
    row.save(update_fields=["status", "sent_at", "last_error"])


def _mark_failed(row: MeterEvent, error: str, now: datetime) -> None:
    row.status = MeterEvent.Status.FAILED
    row.attempts += 1
    row.last_error = error
    row.next_attempt_at = now + backoff(row.attempts)
    row.save(update_fields=["status", "attempts", "last_error", "next_attempt_at"])


def send_due_meter_events(limit: int | None = None) -> SendResult:
    """Send the current tenant's due meter events (at most `limit`, default
    STRIPE_METER_BATCH). Runs in the caller's transaction (tenant_context): the rows stay
    locked, against other senders, until it commits."""
    tenant_id = require_tenant_id()
    limit = limit or settings.STRIPE_METER_BATCH
    result = SendResult()
    if not metering_enabled():
        log_disabled_once()
        result.disabled = True
        result.waiting = due_meter_events()
        return result
    now = timezone.now()
    rows = list(
        MeterEvent.objects.select_for_update(skip_locked=True)
        .filter(
            status__in=[MeterEvent.Status.PENDING, MeterEvent.Status.FAILED],
            next_attempt_at__lte=now,
        )
        .order_by("next_attempt_at", "id")[:limit]
    )
    if not rows:
        return result
    client = stripe_client()
    try:
        customer_id, result.customer_created = ensure_customer(client)
    except stripe.StripeError as exc:
        result.error = describe(exc)
        result.waiting = len(rows)
        logger.warning("tenant %s: no Stripe customer, nothing sent: %s", tenant_id, result.error)
        return result
    for row in rows:
        try:
            client.v1.billing.meter_events.create(
                params={
                    "event_name": settings.STRIPE_METER_EVENT_NAME,
                    "payload": {"stripe_customer_id": customer_id, "value": str(int(row.value))},
                    "identifier": row.identifier,
                    "timestamp": int(row.timestamp.timestamp()),
                },
                options={"idempotency_key": f"playbook-meter-{row.identifier}-{row.attempts}"},
            )
        except stripe.StripeError as exc:
            if is_duplicate(exc):
                _mark_sent(row, timezone.now())
                result.duplicates += 1
                continue
            error = describe(exc)
            _mark_failed(row, error, timezone.now())
            result.failed += 1
            result.error = error
            logger.warning("tenant %s: meter event %s failed: %s", tenant_id, row.id, error)
            if not isinstance(exc, stripe.InvalidRequestError):
                break  # Stripe is down, rate-limits us, or refuses the key: the rest waits.
            continue
        _mark_sent(row, timezone.now())
        result.sent += 1
    result.waiting = due_meter_events(now)
    return result
