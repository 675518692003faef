"""What people and API clients are told while a dependency is briefly down. The fault suite
(tests/reliability/test_faults.py, `-m faults`) breaks the real services under the real app;
these check the same answers in process, in milliseconds.
"""

from __future__ import annotations

import json

import pytest
from django.db import InterfaceError, OperationalError
from django.db.transaction import TransactionManagementError
from django.http import HttpResponse
from django.test import RequestFactory

from agents.models import AgentRun
from config.views import server_error
from conversations.threads import status_line


def fail_with(exc: Exception, path: str) -> HttpResponse:
    """server_error as Django calls it: while the exception is being handled."""
    try:
        raise exc
    except Exception:
        return server_error(RequestFactory().get(path))


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("connection to server at 127.0.0.1 failed: Connection refused"),
        InterfaceError("connection already closed"),
    ],
)
def test_a_database_outage_is_a_503_with_retry_after_never_a_500(exc: Exception) -> None:
    api = fail_with(exc, "/api/v1/conversations/")
    assert api.status_code == 503
    assert json.loads(api.content)["code"] == "service_unavailable"
    assert int(api["Retry-After"]) > 0

    page = fail_with(exc, "/chat/")
    assert page.status_code == 503
    assert int(page["Retry-After"]) > 0
    body = page.content.decode()
    assert "Playbook is briefly unavailable" in body
    assert "Traceback" not in body and "OperationalError" not in body


def test_an_error_raised_while_handling_a_lost_connection_is_a_503_too() -> None:
    try:
        raise InterfaceError("connection already closed")
    except InterfaceError:
        broken = fail_with(TransactionManagementError("An error occurred"), "/api/v1/me")
    assert broken.status_code == 503


def test_any_other_error_is_still_a_500() -> None:
    assert fail_with(ValueError("a bug"), "/api/v1/me").status_code == 500
    assert fail_with(ValueError("a bug"), "/chat/").status_code == 500


def test_a_run_waiting_to_try_again_says_so_to_the_client_and_the_team() -> None:
    waiting = AgentRun(status=AgentRun.Status.QUEUED, error="LimiterUnavailable")
    client = status_line(waiting, for_client=True)
    assert client is not None and client.kind == "waiting"
    assert "briefly unavailable" in client.text and "saved" in client.text
    team = status_line(waiting, for_client=False)
    assert team is not None and team.kind == "waiting" and "LimiterUnavailable" in team.text
    thinking = status_line(AgentRun(status=AgentRun.Status.QUEUED), for_client=True)
    assert thinking is not None and thinking.kind == "thinking"
