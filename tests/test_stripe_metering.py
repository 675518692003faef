"""Stripe metered billing: customers, the meter-event outbox, retries, no double billing, and
the ledger rebuild.

Stripe is a local stand-in (an http.server thread on 127.0.0.1) reached through the official
SDK with STRIPE_API_BASE. It checks what the real API requires — `Authorization: Bearer
sk_test_…`, a form-encoded body, an Idempotency-Key on every POST, exactly the documented
fields — replays a repeated Idempotency-Key like Stripe does, and rejects a meter event whose
identifier it already has. Stripe does not document the error of that rejection for
/v1/billing/meter_events; the stand-in answers like any Stripe "already exists" error:
400, `{"error": {"type": "invalid_request_error", "code": "resource_already_exists",
"param": "identifier", "message": "A meter event with identifier '…' already exists."}}`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from agents.models import AgentRun
from billing import limiter, stripe_sync
from billing.models import MeterEvent, ModelPrice, StripeCustomer, UsageEvent
from billing.tasks import send_all_meter_events, send_meter_events_for_tenant
from billing.usage import guarded_call
from config.celery import app as celery_app
from tenants.context import platform_context, tenant_context
from tenants.models import Tenant
from tests.factories import TenantFactory, build_world

EVENT_NAME = "playbook_usage"
CUSTOMER_FIELDS = {"name", "metadata[tenant_id]"}
METER_FIELDS = {
    "event_name",
    "payload[stripe_customer_id]",
    "payload[value]",
    "identifier",
    "timestamp",
}


class FakeStripe:
    """What the stand-in received and what it should do next."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []  # request-shape violations: every test expects none
        self.customers: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, str]] = []
        self.duplicates_rejected = 0
        self.replays = 0
        self.stored: dict[str, tuple[list[tuple[str, str]], int, dict[str, Any]]] = {}
        # Planned answers to the next meter events / customers: ("fail", status),
        # ("accept_then_fail", status: recorded, but the answer is an error),
        # ("echo_key", 401: an error whose message contains the key).
        self.meter_plan: list[tuple[str, int]] = []
        self.customer_plan: list[tuple[str, int]] = []
        self.delay = 0.0

    @property
    def identifiers(self) -> list[str]:
        return [e["identifier"] for e in self.events]

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def handle(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        with self.lock:
            return self._handle(method, path, headers, body)

    def _problem(self, message: str) -> tuple[int, dict[str, Any]]:
        self.problems.append(message)
        return 400, error("invalid_request_error", message)

    def _handle(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if self.delay:
            time.sleep(self.delay)
        auth = headers.get("Authorization", "")
        if auth != f"Bearer {self.secret}" or not self.secret.startswith("sk_test_"):
            self.problems.append(f"bad Authorization header on {path}")
            return 401, error("invalid_request_error", "Invalid API Key provided.")
        if method != "POST":
            return self._problem(f"unexpected {method} {path}")
        if not headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return self._problem(f"{path}: body is not form-encoded")
        key = headers.get("Idempotency-Key", "")
        if not key:
            return self._problem(f"{path}: POST without Idempotency-Key")
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return self._problem(f"{path}: malformed form body")
        form = dict(pairs)
        if len(form) != len(pairs):
            return self._problem(f"{path}: a field is sent twice")
        self.requests.append({"path": path, "form": form, "idempotency_key": key})
        if key in self.stored:  # Stripe replays the first answer to a key (24 hours)
            first_pairs, status, answer = self.stored[key]
            if sorted(first_pairs) != sorted(pairs):
                return 400, error(
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters.",
                )
            self.replays += 1
            return status, answer
        problems = len(self.problems)
        if path == "/v1/customers":
            status, answer = self.create_customer(form)
        elif path == "/v1/billing/meter_events":
            status, answer = self.create_meter_event(form)
        else:
            return self._problem(f"unknown path {path}")
        if status not in (401, 429) and len(self.problems) == problems:
            # Like Stripe: the first answer to a key is kept, errors (a 500 too) included,
            # unless the request never started (rate limited, not authenticated).
            self.stored[key] = (pairs, status, answer)
        return status, answer

    def create_customer(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if set(form) != CUSTOMER_FIELDS or not form["name"]:
            return self._problem(f"customer fields {sorted(form)}")
        if self.customer_plan:
            _, status = self.customer_plan.pop(0)
            return status, error("api_error", "Something went wrong on Stripe's end.")
        customer_id = f"cus_{uuid.uuid4().hex[:14]}"
        customer: dict[str, Any] = {
            "id": customer_id,
            "object": "customer",
            "name": form["name"],
            "metadata": {"tenant_id": form["metadata[tenant_id]"]},
            "livemode": False,
        }
        self.customers[customer_id] = customer
        return 200, customer

    def create_meter_event(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if set(form) != METER_FIELDS:
            return self._problem(f"meter event fields {sorted(form)}")
        if form["event_name"] != EVENT_NAME:
            return self._problem(f"event_name {form['event_name']!r}")
        if not re.fullmatch(r"[1-9][0-9]*", form["payload[value]"]):
            return self._problem(f"payload[value] {form['payload[value]']!r} is not an integer")
        if not re.fullmatch(r"[0-9]+", form["timestamp"]):
            return self._problem(f"timestamp {form['timestamp']!r} is not an integer")
        age = time.time() - int(form["timestamp"])
        if not -300 <= age <= 35 * 86400:
            return self._problem("timestamp outside the past 35 days")
        if form["payload[stripe_customer_id]"] not in self.customers:
            return self._problem("unknown customer")
        if len(form["identifier"]) > 100:
            return self._problem("identifier longer than 100")
        plan = self.meter_plan.pop(0) if self.meter_plan else ("ok", 200)
        if plan[0] == "fail":
            kind = "rate_limit_error" if plan[1] == 429 else "api_error"
            return plan[1], error(kind, "Something went wrong on Stripe's end.")
        if plan[0] == "echo_key":
            return 401, error("invalid_request_error", f"Invalid API Key provided: {self.secret}")
        if form["identifier"] in self.identifiers:
            self.duplicates_rejected += 1
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "code": "resource_already_exists",
                    "param": "identifier",
                    "message": f"A meter event with identifier '{form['identifier']}' "
                    "already exists.",
                }
            }
        event = {
            "identifier": form["identifier"],
            "customer": form["payload[stripe_customer_id]"],
            "value": form["payload[value]"],
            "timestamp": form["timestamp"],
        }
        self.events.append(event)
        if plan[0] == "accept_then_fail":  # recorded, but the answer is lost
            return plan[1], error("api_error", "Something went wrong on Stripe's end.")
        return 200, {
            "object": "billing.meter_event",
            "created": int(time.time()),
            "event_name": form["event_name"],
            "identifier": form["identifier"],
            "livemode": False,
            "payload": {
                "stripe_customer_id": event["customer"],
                "value": event["value"],
            },
            "timestamp": int(form["timestamp"]),
        }


def error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


@pytest.fixture
def fake_stripe(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    fake = FakeStripe(f"sk_test_{uuid.uuid4().hex}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.answer()

        def do_GET(self) -> None:
            self.answer()

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, payload = fake.handle(self.command, self.path, self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.STRIPE_SECRET_KEY = fake.secret
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{server.server_address[1]}"
    settings.STRIPE_METER_EVENT_NAME = EVENT_NAME
    monkeypatch.setattr(stripe_sync, "_disabled_logged", False)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
    assert fake.problems == []


def usage(cost: int, *, age: timedelta = timedelta(0)) -> MeterEvent:
    """A usage event and its meter event, as guarded_call writes them (inside a tenant)."""
    event = UsageEvent.objects.create(
        idempotency_key=uuid.uuid4().hex, kind="model", model="m", cost_microdollars=cost
    )
    moment = timezone.now() - age
    return MeterEvent.objects.create(
        usage_event=event,
        identifier=str(event.id),
        value=cost,
        timestamp=moment,
        next_attempt_at=moment - timedelta(seconds=1),
    )


def make_due(*rows: MeterEvent) -> None:
    MeterEvent.objects.filter(id__in=[r.id for r in rows]).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def redis_int(key: str) -> int | None:
    value = limiter.client().get(key)
    return None if value is None else int(value)


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_every_costly_usage_event_reaches_exactly_one_meter_event(
    fake_stripe: FakeStripe,
) -> None:
    acme = build_world("acme")
    with platform_context():
        ModelPrice.objects.create(
            name="test-model", input_per_million=2_500_000, output_per_million=10_000_000
        )
        ModelPrice.objects.create(name="tool:free_search", per_call=0)
        ModelPrice.objects.create(name="tool:web_fetch", per_call=1_000)
    with tenant_context(acme.tenant):
        conversation = acme.conversations[0]
        run = AgentRun.objects.create(
            conversation=conversation,
            trigger_message=conversation.messages.get(),
            requested_by=acme.client,
        )
        answer = SimpleNamespace(usage_metadata={"input_tokens": 1200, "output_tokens": 300})
        for step in ("draft", "revise", "draft"):  # the repeated step is recorded once
            guarded_call(kind="model", run=run, step=step, call=lambda: answer, model="test-model")
        guarded_call(kind="tool", run=run, step="t1", call=lambda: "ok", tool="free_search")
        guarded_call(kind="tool", run=run, step="t2", call=lambda: "ok", tool="web_fetch")
        costly = {
            str(e.id): e.cost_microdollars for e in UsageEvent.objects.all() if e.cost_microdollars
        }
        assert UsageEvent.objects.count() == 4 and len(costly) == 3
        result = send_meter_events_for_tenant.apply(kwargs={"tenant_id": str(acme.tenant.id)}).get()
        assert result["sent"] == 3 and result["failed"] == 0 and result["waiting"] == 0
        customer = StripeCustomer.objects.get().customer_id
        assert set(MeterEvent.objects.values_list("status", flat=True)) == {"sent"}
        assert MeterEvent.objects.filter(sent_at__isnull=True).count() == 0
    assert sorted(fake_stripe.identifiers) == sorted(costly)
    assert {e["identifier"]: int(e["value"]) for e in fake_stripe.events} == costly
    assert {e["customer"] for e in fake_stripe.events} == {customer}
    assert sorted(costly.values()) == [1_000, 6_000, 6_000]  # 1,200 + 300 tokens; the tool
    # Nothing is due any more: a second run sends nothing.
    with tenant_context(acme.tenant):
        assert stripe_sync.send_due_meter_events().sent == 0
    assert len(fake_stripe.events) == 3


@pytest.mark.django_db
def test_the_beat_task_fans_out_to_every_tenant(fake_stripe: FakeStripe) -> None:
    tenants = [TenantFactory.create(), TenantFactory.create(), TenantFactory.create()]
    for tenant, count in zip(tenants, (2, 0, 1), strict=True):
        with tenant_context(tenant):
            for _ in range(count):
                usage(500)
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        assert send_all_meter_events.apply().get() == 3
    finally:
        celery_app.conf.task_always_eager = previous
    assert len(fake_stripe.events) == 3
    by_customer: dict[str, int] = {}
    for event in fake_stripe.events:
        by_customer[event["customer"]] = by_customer.get(event["customer"], 0) + 1
    assert sorted(by_customer.values()) == [1, 2]
    # A customer only for tenants with something to bill (the command creates the others).
    assert len(fake_stripe.customers) == 2


@pytest.mark.django_db
def test_a_stripe_error_is_retried_later_with_backoff(fake_stripe: FakeStripe) -> None:
    tenant = TenantFactory.create()
    with tenant_context(tenant):
        first, second, third = usage(1_000), usage(2_000), usage(3_000)
        fake_stripe.meter_plan = [("fail", 500)]
        before = timezone.now()
        result = stripe_sync.send_due_meter_events()
        # Stripe is failing: the first error stops the batch, the rest waits untouched.
        assert (result.sent, result.failed, result.waiting) == (0, 1, 2)
        assert "HTTP 500" in result.error
        first.refresh_from_db()
        assert first.status == "failed" and first.attempts == 1
        assert "HTTP 500" in first.last_error and fake_stripe.secret not in first.last_error
        delay = first.next_attempt_at - before
        assert timedelta(seconds=30) <= delay <= timedelta(seconds=35)
        assert MeterEvent.objects.filter(status="pending", attempts=0).count() == 2

        # The others go out on the next run; the failed one is not due yet.
        result = stripe_sync.send_due_meter_events()
        assert (result.sent, result.failed, result.waiting) == (2, 0, 0)
        assert sorted(fake_stripe.identifiers) == sorted([second.identifier, third.identifier])

        make_due(first)
        fake_stripe.meter_plan = [("fail", 429)]
        before = timezone.now()
        assert stripe_sync.send_due_meter_events().failed == 1
        first.refresh_from_db()
        assert first.attempts == 2 and "RateLimitError (HTTP 429" in first.last_error
        delay = first.next_attempt_at - before
        assert timedelta(seconds=60) <= delay <= timedelta(seconds=65)

        make_due(first)
        result = stripe_sync.send_due_meter_events()
        assert (result.sent, result.failed) == (1, 0)
        first.refresh_from_db()
        assert first.status == "sent" and first.attempts == 2 and first.last_error == ""
    assert sorted(fake_stripe.identifiers) == sorted(
        [first.identifier, second.identifier, third.identifier]
    )


def test_backoff_doubles_from_thirty_seconds_up_to_an_hour() -> None:
    assert [stripe_sync.backoff(n).total_seconds() for n in range(1, 9)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
    ]
    assert stripe_sync.backoff(500) == timedelta(hours=1)


@pytest.mark.django_db
def test_a_send_whose_answer_was_lost_is_not_billed_twice(fake_stripe: FakeStripe) -> None:
    tenant = TenantFactory.create()
    with tenant_context(tenant):
        lost = usage(4_200)
        # Stripe records the event, but the answer is lost (a 500 or a timeout): retried later.
        fake_stripe.meter_plan = [("accept_then_fail", 500)]
        assert stripe_sync.send_due_meter_events().failed == 1
        lost.refresh_from_db()
        assert lost.status == "failed" and lost.attempts == 1
        assert fake_stripe.identifiers == [lost.identifier]

        # The retry (a new Idempotency-Key) is refused as a duplicate: counted as sent.
        make_due(lost)
        result = stripe_sync.send_due_meter_events()
        assert (result.sent, result.duplicates, result.failed) == (0, 1, 0)
        lost.refresh_from_db()
        assert lost.status == "sent" and lost.last_error == ""
        assert fake_stripe.duplicates_rejected == 1

        # A sent row reset to pending by hand and sent again: Stripe replays its answer to
        # the same Idempotency-Key; with another key (a day later), it refuses the identifier.
        sent = usage(1_300)
        assert stripe_sync.send_due_meter_events().sent == 1
        MeterEvent.objects.filter(id=sent.id).update(status="pending")
        make_due(sent)
        assert stripe_sync.send_due_meter_events().sent == 1
        assert fake_stripe.replays == 1
        MeterEvent.objects.filter(id=sent.id).update(status="pending", attempts=3)
        make_due(sent)
        assert stripe_sync.send_due_meter_events().duplicates == 1
        assert set(MeterEvent.objects.values_list("status", flat=True)) == {"sent"}
    assert fake_stripe.identifiers == [lost.identifier, sent.identifier]
    assert fake_stripe.duplicates_rejected == 2


def test_two_senders_at_once_send_each_meter_event_once(
    live_db: None, fake_stripe: FakeStripe
) -> None:
    tenant = TenantFactory.create()
    with tenant_context(tenant):
        rows = [usage(100 + i) for i in range(24)]
    fake_stripe.delay = 0.005
    barrier = threading.Barrier(2)
    totals: list[int] = []
    failures: list[BaseException] = []

    def sender() -> None:
        try:
            barrier.wait()
            sent = 0
            while True:
                with tenant_context(tenant):
                    result = stripe_sync.send_due_meter_events(limit=4)
                sent += result.sent + result.duplicates
                if not result.sent + result.duplicates and not result.waiting:
                    break
            totals.append(sent)
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert sum(totals) == 24
    assert sorted(fake_stripe.identifiers) == sorted(r.identifier for r in rows)
    assert fake_stripe.duplicates_rejected == 0
    assert len(fake_stripe.customers) == 1  # the same customer, even if both created it
    with tenant_context(tenant):
        assert set(MeterEvent.objects.values_list("status", flat=True)) == {"sent"}
        assert StripeCustomer.objects.count() == 1


@pytest.mark.django_db
def test_a_tenant_without_a_customer_gets_one_first(fake_stripe: FakeStripe) -> None:
    acme, globex = TenantFactory.create(name="Acme Coaching"), TenantFactory.create()
    with tenant_context(acme):
        usage(900)
        result = stripe_sync.send_due_meter_events()
        assert result.customer_created and result.sent == 1
        customer = StripeCustomer.objects.get()
    assert fake_stripe.paths() == ["/v1/customers", "/v1/billing/meter_events"]
    created = fake_stripe.requests[0]
    assert created["form"] == {"name": "Acme Coaching", "metadata[tenant_id]": str(acme.id)}
    assert created["idempotency_key"] == f"playbook-customer-{acme.id}"
    assert fake_stripe.customers[customer.customer_id]["metadata"]["tenant_id"] == str(acme.id)
    assert fake_stripe.events[0]["customer"] == customer.customer_id

    # A customer created at Stripe whose row was lost (the transaction rolled back): asking
    # again within Stripe's 24 hours returns the same customer, not a second one.
    with pytest.raises(RuntimeError), tenant_context(globex):
        lost, _ = stripe_sync.ensure_customer()
        raise RuntimeError("rolled back")
    with tenant_context(globex):
        assert StripeCustomer.objects.count() == 0
        again, created_again = stripe_sync.ensure_customer()
        assert again == lost and created_again
        assert stripe_sync.ensure_customer() == (again, False)  # no request: the row is there
    assert len(fake_stripe.customers) == 2 and fake_stripe.replays == 1
    assert fake_stripe.paths().count("/v1/customers") == 3


@pytest.mark.django_db
def test_the_stripe_sync_command(fake_stripe: FakeStripe) -> None:
    acme, globex = TenantFactory.create(slug="acme"), TenantFactory.create(slug="globex")
    with tenant_context(acme):
        usage(100), usage(200), usage(300)
    out = command("stripe_sync", "--tenant", "acme", "--limit", "2")
    assert re.fullmatch(
        r"acme: customer cus_\w+ \(created\), 3 meter events sent, 0 already at Stripe, "
        r"0 failed, 0 waiting\n",
        out,
    )
    out = command("stripe_sync")  # every tenant: globex gets its customer too
    assert "acme: customer cus_" in out and "(created)" not in out.split("\n")[0]
    assert re.search(r"globex: customer cus_\w+ \(created\), 0 meter events sent", out)
    with tenant_context(globex):
        assert StripeCustomer.objects.count() == 1
    assert len(fake_stripe.events) == 3

    with tenant_context(globex):
        usage(50)
    fake_stripe.meter_plan = [("fail", 503)]
    with pytest.raises(CommandError, match="1 tenant"):
        command("stripe_sync")
    with pytest.raises(CommandError, match="No tenant"):
        command("stripe_sync", "--tenant", "nobody")


@pytest.mark.django_db
def test_without_a_secret_key_nothing_is_sent(
    fake_stripe: FakeStripe, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.STRIPE_SECRET_KEY = ""
    tenant = TenantFactory.create(slug="acme")
    with tenant_context(tenant):
        row = usage(1_000)
    with caplog.at_level(logging.WARNING, logger="billing.stripe_sync"):
        with tenant_context(tenant):
            result = stripe_sync.send_due_meter_events()
        assert result.disabled and result.sent == 0 and result.waiting == 1
        assert "Stripe metering is disabled" in caplog.text
        assert send_all_meter_events.apply().get() == 0
        out = command("stripe_sync")
    assert out == (
        "Stripe metering is disabled: STRIPE_SECRET_KEY is not set. "
        "Nothing sent; 1 meter events waiting.\n"
    )
    with pytest.raises(stripe_sync.MeteringDisabled):
        stripe_sync.stripe_client()
    assert fake_stripe.requests == []
    with tenant_context(tenant):
        row.refresh_from_db()
        assert row.status == "pending" and row.attempts == 0
        assert StripeCustomer.objects.count() == 0


@pytest.mark.django_db
def test_the_secret_key_never_appears_in_logs_or_errors(
    fake_stripe: FakeStripe,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = TenantFactory.create(slug="acme")
    caplog.set_level(logging.DEBUG)  # the SDK's own request and response logs too
    fake_stripe.customer_plan = [("fail", 500)]
    with tenant_context(tenant):
        rows = [usage(10), usage(20)]
        assert "HTTP 500" in stripe_sync.send_due_meter_events().error  # no customer yet
        fake_stripe.meter_plan = [("echo_key", 401)]  # an error that quotes the key
        result = stripe_sync.send_due_meter_events()
        assert result.failed == 1 and "[redacted]" in result.error
        make_due(*rows)
        fake_stripe.meter_plan = [("fail", 500)]
        stripe_sync.send_due_meter_events()
        make_due(*rows)
        assert stripe_sync.send_due_meter_events().sent == 2
        errors = list(MeterEvent.objects.values_list("last_error", flat=True))
    # Stripe keeps the 500 of the first customer key: the next attempt used another key.
    keys = [r["idempotency_key"] for r in fake_stripe.requests if r["path"] == "/v1/customers"]
    assert keys == [f"playbook-customer-{tenant.id}", f"playbook-customer-{tenant.id}-1"]

    TenantFactory.create(slug="globex")
    fake_stripe.customer_plan = [("fail", 500)]
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("stripe_sync", stdout=out, stderr=out)
    assert "globex: no Stripe customer (APIError (HTTP 500" in out.getvalue()
    printed = capsys.readouterr()
    assert "Request to Stripe api" in caplog.text  # the SDK did log
    for text in (caplog.text, out.getvalue(), printed.out, printed.err, *errors, result.error):
        assert fake_stripe.secret not in text
        assert fake_stripe.secret[8:] not in text


@pytest.mark.django_db
def test_rebuild_ledger_restores_the_spend_from_postgresql() -> None:
    acme, globex = build_world("acme"), build_world("globex")
    redis = limiter.client()
    period = limiter.period_of()
    spend = {
        t.slug: limiter.keys(str(t.id), None, period)["spend"] for t in (acme.tenant, globex.tenant)
    }
    with tenant_context(acme.tenant):
        for cost in (1_500, 2_500, 0):
            UsageEvent.objects.create(
                idempotency_key=uuid.uuid4().hex, kind="model", cost_microdollars=cost
            )
        old = UsageEvent.objects.create(
            idempotency_key="last-month", kind="model", cost_microdollars=9_999
        )
        UsageEvent.objects.filter(id=old.id).update(
            created_at=limiter.period_start(period) - timedelta(days=1)
        )
    with tenant_context(globex.tenant):
        UsageEvent.objects.create(idempotency_key="g", kind="tool", cost_microdollars=700)
    try:
        # As after FLUSHDB: the tenant's ledger is gone (a stale reservation with it).
        redis.delete(*limiter.keys(str(acme.tenant.id), None, period).values())
        redis.set(spend["globex"], 1)
        redis.set(limiter.keys(str(acme.tenant.id), None, period)["reserved"], 123)
        out = command("rebuild_ledger", "--tenant", "acme")
        assert out == f"acme: {period} spend 4000 micro-dollars ($0.0040)\n"
        assert redis_int(spend["acme"]) == 4_000
        assert redis.get(limiter.keys(str(acme.tenant.id), None, period)["reserved"]) is None
        assert 0 < redis.ttl(spend["acme"]) <= limiter.period_ttl()
        assert redis_int(spend["globex"]) == 1  # another tenant: untouched

        out = command("rebuild_ledger")
        assert f"acme: {period} spend 4000 micro-dollars" in out
        assert f"globex: {period} spend 700 micro-dollars" in out
        assert redis_int(spend["globex"]) == 700
        with pytest.raises(CommandError, match="No tenant"):
            command("rebuild_ledger", "--tenant", "nobody")
    finally:
        for tenant in (acme.tenant, globex.tenant):
            redis.delete(*limiter.keys(str(tenant.id), None, period).values())
    assert Tenant.objects.count() == 2
