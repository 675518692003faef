"""Telemetry: JSON logs, OpenTelemetry traces and Sentry tags, all carrying who and where.

Every log record, span and Sentry event can be tied to a tenant, a user, a request and, inside
an agent run, the run:

- `ContextFilter` (on the log handler, next to `config.scrubbing.SecretsFilter`) adds
  `tenant_id`, `user_id`, `request_id` and `agent_run_id` to each record; `JsonFormatter`
  writes one JSON object per line (`LOG_FORMAT=json`, the production default).
- `setup_tracing()` (web, ASGI and Celery worker processes) installs a TracerProvider when
  `OTEL_EXPORTER` is `otlp` or `console`, instruments Django, psycopg, Redis and Celery, and
  adds `ContextSpanProcessor`, which stamps `tenant.id`, `user.id`, `request.id` and
  `agent_run.id` on every span started in that context.
- `TelemetryMiddleware` (after authentication and the tenant middleware) records the request's
  user and request id, names them on the request's span and sets Sentry tags;
  `bind_agent_run(run_id)` does the same for an agent run.

The tenant comes from `tenants.context.current_tenant_id()`, the request id from
`audit.middleware.RequestInfoMiddleware`; nothing here decides access.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

from config.scrubbing import scrub_text

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import Span

_request_id: ContextVar[str | None] = ContextVar("telemetry_request_id", default=None)
_user_id: ContextVar[str | None] = ContextVar("telemetry_user_id", default=None)
_agent_run_id: ContextVar[str | None] = ContextVar("telemetry_agent_run_id", default=None)

ID_FIELDS = ("tenant_id", "user_id", "request_id", "agent_run_id")
# Log field -> span attribute.
SPAN_ATTRIBUTES = {
    "tenant_id": "tenant.id",
    "user_id": "user.id",
    "request_id": "request.id",
    "agent_run_id": "agent_run.id",
}


def principal_id(user: Any) -> str | None:
    """A user's id; an API key principal is `api_key:<id>`; anonymous is None."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    if getattr(user, "actor_type", "") == "api_key":
        return f"api_key:{user.pk}"
    return None if user.pk is None else str(user.pk)


def current_ids() -> dict[str, str | None]:
    """The ids of the current context (None where there is none)."""
    from audit.context import current_request_info
    from tenants.context import current_tenant_id

    tenant_id = current_tenant_id()
    request_id = _request_id.get()
    if request_id is None:
        info = current_request_info()
        request_id = info.request_id if info is not None else None
    return {
        "tenant_id": str(tenant_id) if tenant_id is not None else None,
        "user_id": _user_id.get(),
        "request_id": request_id,
        "agent_run_id": _agent_run_id.get(),
    }


def _set_sentry_tags(ids: dict[str, str | None]) -> None:
    import sentry_sdk

    if not sentry_sdk.get_client().is_active():
        return
    for key, value in ids.items():
        if value is not None:
            sentry_sdk.set_tag(key, value)


def _annotate_current_span(ids: dict[str, str | None]) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for key, value in ids.items():
        if value is not None:
            span.set_attribute(SPAN_ATTRIBUTES[key], value)


# --------------------------------------------------------------------------- logging


class ContextFilter(logging.Filter):
    """Adds tenant_id, user_id, request_id and agent_run_id to every record (values passed
    with `extra=` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        request = getattr(record, "request", None)
        if request is not None and ids["request_id"] is None:
            # django.request logs 4xx/5xx responses after the middleware has returned.
            ids["request_id"] = getattr(request, "request_id", None)
            user = getattr(request, "_cached_user", None)  # only if authentication ran
            ids["user_id"] = principal_id(user)
            tenant_id = getattr(user, "tenant_id", None)
            ids["tenant_id"] = str(tenant_id) if tenant_id is not None else None
        for key, value in ids.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, message, the context ids,
    trace_id/span_id inside a span, and exc (the formatted traceback, scrubbed)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ID_FIELDS:
            data[key] = getattr(record, key, None)
        for key in ("trace_id", "span_id"):
            if getattr(record, key, None):
                data[key] = getattr(record, key)
        exc = record.exc_text
        if not exc and record.exc_info:
            exc = self.formatException(record.exc_info)
        if exc:
            # SecretsFilter formats and scrubs tracebacks whose exception names a secret; a
            # chained exception's message may still hold one.
            data["exc"] = scrub_text(exc)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


# --------------------------------------------------------------------------- requests, runs


class TelemetryMiddleware:
    """Records the authenticated principal and the request id for logs, spans and Sentry.
    Placed after authentication and TenantContextMiddleware (see settings)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_token = _request_id.set(getattr(request, "request_id", None))
        user_token = _user_id.set(principal_id(getattr(request, "user", None)))
        try:
            ids = current_ids()
            ids.pop("agent_run_id")
            _annotate_current_span(ids)
            _set_sentry_tags(ids)
            return self.get_response(request)
        finally:
            _user_id.reset(user_token)
            _request_id.reset(request_token)


@contextmanager
def bind_agent_run(run_id: uuid.UUID | str, *, user_id: Any = None) -> Iterator[None]:
    """Inside the block, logs carry agent_run_id (and user_id, the run's requester, when
    given), new spans agent_run.id, and Sentry events the agent_run_id tag."""
    import sentry_sdk

    run_token = _agent_run_id.set(str(run_id))
    user_token = _user_id.set(str(user_id)) if user_id is not None else None
    try:
        ids = current_ids()
        _annotate_current_span(ids)
        with sentry_sdk.new_scope():
            _set_sentry_tags(ids)
            yield
    finally:
        if user_token is not None:
            _user_id.reset(user_token)
        _agent_run_id.reset(run_token)


# --------------------------------------------------------------------------- tracing


class ContextSpanProcessor(SpanProcessor):
    """Stamps tenant.id, user.id, request.id and agent_run.id on every span at its start."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for key, value in current_ids().items():
            if value is not None:
                span.set_attribute(SPAN_ATTRIBUTES[key], value)


def _redact_query(span: Any, request: HttpRequest) -> None:
    """Django request hook: query strings (OIDC codes, state) stay out of spans."""
    if not request.META.get("QUERY_STRING") or not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for key in ("http.url", "url.full", "http.target"):
        value = attributes.get(key)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(key, value.split("?", 1)[0] + "?[redacted]")
    if "url.query" in attributes:
        span.set_attribute("url.query", "[redacted]")


_setup_lock = threading.Lock()
_tracing_enabled = False


def setup_tracing() -> bool:
    """Install the tracer provider and the instrumentations once per process, when
    settings.OTEL_EXPORTER is "otlp" or "console". Returns whether tracing is on.

    Call it before Django's handler loads its middleware (the Django instrumentation adds
    one), and in each Celery worker process (exporter threads do not survive a fork)."""
    global _tracing_enabled
    from django.conf import settings

    exporter_name = getattr(settings, "OTEL_EXPORTER", "none")
    if exporter_name not in ("otlp", "console"):
        return False
    with _setup_lock:
        if _tracing_enabled:
            return True
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        provider = TracerProvider(
            resource=Resource.create(
                {
                    "service.name": settings.OTEL_SERVICE_NAME,
                    "deployment.environment.name": settings.PLAYBOOK_ENV,
                }
            )
        )
        provider.add_span_processor(ContextSpanProcessor())
        if exporter_name == "otlp":
            # Reads OTEL_EXPORTER_OTLP_ENDPOINT / _HEADERS itself (OTLP over HTTP, :4318).
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)

        DjangoInstrumentor().instrument(request_hook=_redact_query)
        PsycopgInstrumentor().instrument(skip_dep_check=True)
        RedisInstrumentor().instrument()
        CeleryInstrumentor().instrument()
        _tracing_enabled = True
        return True
