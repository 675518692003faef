"""Telemetry: JSON log lines and spans carry the tenant, user, request and agent run.

A probe view (this module is its URLconf) logs during a real request through the whole
middleware stack; agent runs go through the product with a scripted model (as in
tests/test_agents.py) while an in-memory span exporter records what `guarded_call` traced.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.llm import use_chat_model
from config.scrubbing import REDACTED, SecretsFilter
from config.telemetry import ContextFilter, ContextSpanProcessor, JsonFormatter, bind_agent_run
from tests.factories import TenantFactory, UserFactory, build_world
from tests.test_agents import (
    answer,
    ask,
    calls,
    eager,  # noqa: F401  (fixture)
    plan_defaults,  # noqa: F401  (fixture)
    scripted,
    stack,  # noqa: F401  (fixture)
    tool_call,
)

PROBE_LOGGER = "tests.telemetry.probe"
SECRET = "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2"


def probe(request: HttpRequest) -> HttpResponse:
    logging.getLogger(PROBE_LOGGER).info("probe with key %s", SECRET)
    return HttpResponse("ok")


urlpatterns = [path("probe/", probe)]


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON lines PROBE_LOGGER wrote, through a handler set up like the production one."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretsFilter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(PROBE_LOGGER)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the global tracer provider (installed once, with the same
    context processor setup_tracing adds); shut down after the test so it records no more."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(ContextSpanProcessor())
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@override_settings(ROOT_URLCONF=__name__)
def test_a_tenant_request_logs_json_with_its_ids_and_no_secret(
    db: None, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    tenant = TenantFactory.create(slug="northwind")
    user = UserFactory.create(tenant=tenant)
    client = Client()
    client.force_login(user)

    response = client.get("/probe/")

    assert response.status_code == 200
    (line,) = json_lines()
    assert line["tenant_id"] == str(tenant.id)
    assert line["user_id"] == str(user.pk)
    assert line["request_id"] == response["X-Request-ID"]
    assert line["agent_run_id"] is None
    assert line["level"] == "INFO"
    assert line["logger"] == PROBE_LOGGER
    assert line["ts"].endswith("+00:00")
    assert line["message"] == f"probe with key {REDACTED}"
    assert SECRET not in json.dumps(line)


def test_a_request_without_a_tenant_logs_its_request_id_only(
    db: None, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    with override_settings(ROOT_URLCONF=__name__):
        response = Client().get("/probe/", HTTP_X_REQUEST_ID="lb-request-0001")
    (line,) = json_lines()
    assert response["X-Request-ID"] == "lb-request-0001"
    assert (line["request_id"], line["tenant_id"], line["user_id"]) == (
        "lb-request-0001",
        None,
        None,
    )


def test_an_agent_run_binds_its_id_and_scrubs_chained_exceptions(
    json_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    logger = logging.getLogger(PROBE_LOGGER)
    with bind_agent_run("run-1", user_id=7):
        try:
            try:
                raise ValueError(f"provider said no to {SECRET}")
            except ValueError as inner:
                raise RuntimeError("the call failed") from inner
        except RuntimeError:
            logger.exception("in the run")
    logger.info("after the run")

    during, after = json_lines()
    assert (during["agent_run_id"], during["user_id"]) == ("run-1", "7")
    assert "RuntimeError: the call failed" in during["exc"]
    assert SECRET not in during["exc"]
    assert (after["agent_run_id"], after["user_id"]) == (None, None)


@pytest.mark.usefixtures("stack")
def test_an_agent_run_traces_its_model_and_tool_calls(spans: InMemorySpanExporter) -> None:
    acme = build_world("acme")
    model = scripted(
        calls(tool_call("search_playbook", "call_1", query="pricing")),
        answer("Offer the three packages."),
    )
    with use_chat_model(model):
        run_id, _ = ask(acme, "How do I talk about pricing?")

    finished = spans.get_finished_spans()
    model_calls = [s for s in finished if s.name == "agent.model_call"]
    tool_calls = [s for s in finished if s.name == "agent.tool_call"]
    assert len(model_calls) == 2
    assert len(tool_calls) == 1
    for span in [*model_calls, *tool_calls]:
        attributes = dict(span.attributes or {})
        assert attributes["tenant.id"] == str(acme.tenant.id)
        assert attributes["agent_run.id"] == run_id
        assert attributes["user.id"] == str(acme.client.pk)
        assert attributes["request.id"]  # the client's request ran the task eagerly
    last = dict(model_calls[-1].attributes or {})
    assert last["gen_ai.request.model"] == "scripted-model"
    assert (last["gen_ai.usage.input_tokens"], last["gen_ai.usage.output_tokens"]) == (200, 40)
    assert isinstance(last["agent.cost_microdollars"], int)
    assert dict(tool_calls[0].attributes or {})["agent.tool.name"] == "search_playbook"


def test_production_logs_are_json_and_tracing_exports_with_the_service_name() -> None:
    """The settings wiring, in a fresh process: LOG_FORMAT=json on the root handler, and
    OTEL_EXPORTER=console installs the provider and instruments Django requests."""
    code = (
        "import os, logging;"
        "from config.telemetry import setup_tracing;"
        "assert setup_tracing();"
        "import django; django.setup();"
        "from opentelemetry import trace;"
        "span = trace.get_tracer('t').start_span('probe-span');"
        "ctx = trace.use_span(span, end_on_exit=True);"
        "ctx.__enter__();"
        f"logging.getLogger('probe').warning('hello {SECRET}');"
        "ctx.__exit__(None, None, None);"
        "from django.test import Client;"
        "Client().get('/no-such-page/?code=oidc-code-4711', HTTP_HOST='localhost');"
        "trace.get_tracer_provider().shutdown()"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOG_FORMAT": "json",
        "OTEL_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "playbook-test",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    (line,) = [x for x in lines if x["logger"] == "probe"]
    (not_found,) = [x for x in lines if x["logger"] == "django.request"]
    assert not_found["request_id"] and not_found["tenant_id"] is None
    assert line["message"] == f"hello {REDACTED}"
    assert len(line["trace_id"]) == 32
    assert '"name": "probe-span"' in result.stdout
    assert '"service.name": "playbook-test"' in result.stdout
    assert line["trace_id"] in result.stdout
    # The request was traced, without its query string.
    assert "/no-such-page/?[redacted]" in result.stdout
    assert "oidc-code-4711" not in result.stdout


def test_a_bad_log_format_names_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_FORMAT": "xml"},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "LOG_FORMAT must be one of: json, plain" in result.stderr
