"""Bad input is a 4xx with a stable code, never a 500, and nothing of it is saved
(tenants/inputs.py, `InputGuardMiddleware`): the requests of issue 15 first, then each rule.

The exhaustive runs -- every API operation with every payload class, every form of the
product -- are in tests/reliability/test_api_fuzz.py and tests/test_page_inputs.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import include, path
from rest_framework.exceptions import ParseError
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from agents.models import Document
from conversations.models import Conversation, Message
from tenants.context import tenant_context
from tenants.inputs import GuardedJSONParser
from tests.factories import World, build_world
from tests.web import browser, text

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(db: None) -> World:
    return build_world("acme")


@pytest.fixture
def owner(acme: World) -> Client:
    return browser(acme.owner)


def refused(response: Any, code: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["message"] and "Traceback" not in body["message"]
    return body


def counts(world: World) -> tuple[int, int, int]:
    with tenant_context(world.tenant):
        return (
            Conversation.objects.count(),
            Message.objects.count(),
            Document.objects.count(),
        )


def page_refused(response: Any, status: int = 400) -> str:
    """The product's own error page, in the product's words."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("text/html")
    page = text(response)
    assert "That request didn't make sense to us" in page
    assert "Nothing was changed" in page
    assert "Traceback" not in page and "DataError" not in page
    return page


# --------------------------------------------------------------------------- issue 15's requests


def test_a_nul_in_a_document_title_is_refused_and_nothing_is_stored(
    acme: World, owner: Client
) -> None:
    before = counts(acme)
    response = owner.post(
        "/api/v1/documents/",
        {"title": "Board\x00pack", "file": ("board.txt", b"Agenda and minutes.")},
    )
    body = refused(response, "invalid_characters")
    assert "title" in body["message"]
    assert counts(acme) == before


def test_a_nul_in_a_chat_question_is_the_products_page_and_nothing_is_stored(
    acme: World,
) -> None:
    before = counts(acme)
    response = browser(acme.client).post("/chat/new", {"question": "How do I\x00start?"})
    assert "question" in page_refused(response)
    assert counts(acme) == before


def test_an_htmx_post_with_a_nul_gets_a_toast_that_says_what_to_change(acme: World) -> None:
    before = counts(acme)
    response = browser(acme.client).post(
        "/chat/new", {"question": "How do I\x00start?"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 400
    assert json.loads(response["HX-Trigger"]) == {
        "toast": {
            "message": "“question” contains a character that cannot be saved (a NUL or a "
            "broken Unicode character). Remove it and try again. Nothing was saved.",
            "kind": "error",
        }
    }
    assert response["HX-Reswap"] == "none"  # the form stays as the client typed it
    assert counts(acme) == before


def test_a_nul_in_a_consultants_reply_is_refused_and_nothing_is_stored(acme: World) -> None:
    conversation = acme.conversations[0]
    before = counts(acme)
    response = browser(acme.consultant).post(
        f"/app/conversations/{conversation.id}/reply", {"body": "Here\x00you go"}
    )
    page_refused(response)
    assert counts(acme) == before


def test_json_nested_a_hundred_thousand_levels_is_refused(acme: World, owner: Client) -> None:
    before = counts(acme)
    deep = "[" * 100_000 + "]" * 100_000
    response = owner.post("/api/v1/conversations/", deep, content_type="application/json")
    assert "32 levels" in refused(response, "too_deep")["message"]
    # Just past the limit is refused too; at the limit the body reaches the serializer.
    limit = '{"title": ' + "[" * 31 + "1" + "]" * 31 + "}"
    response = owner.post("/api/v1/conversations/", limit, content_type="application/json")
    assert refused(response, "invalid")["fields"]
    over = '{"title": ' + "[" * 32 + "1" + "]" * 32 + "}"
    refused(owner.post("/api/v1/conversations/", over, content_type="application/json"), "too_deep")
    assert counts(acme) == before


@pytest.mark.parametrize("raw", [b"p=abc", b"r=1&p=x", b"o=x", b"\xff\xfe", b"p=1\x00"])
def test_a_tampered_audit_cursor_is_a_400(owner: Client, raw: bytes) -> None:
    response = owner.get("/api/v1/audit/events/", {"cursor": base64.b64encode(raw).decode()})
    body = refused(response, "invalid")
    assert body["fields"]["cursor"] == [
        "This page link is damaged or out of date; start again from the first page."
    ]
    garbage = owner.get("/api/v1/audit/events/", {"cursor": "%%%not base64"})
    refused(garbage, "invalid")


def test_a_real_audit_cursor_still_pages(acme: World, owner: Client) -> None:
    first = owner.get("/api/v1/audit/events/", {"page_size": 1})
    assert first.status_code == 200
    following = first.json()["next"]
    assert following
    second = owner.get(following)
    assert second.status_code == 200
    assert second.json()["results"][0]["id"] != first.json()["results"][0]["id"]


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "1999-12-31"])
def test_a_far_date_on_the_usage_report_is_refused(owner: Client, day: str) -> None:
    body = refused(owner.get("/api/v1/usage/", {"from": day}), "invalid")
    assert body["fields"]["from"] == ["Choose a date between 2000-01-01 and 2099-12-31."]
    page = owner.get("/app/usage/", {"from": day})
    assert page.status_code == 200  # the page shows this month, with the error by the filter
    assert "Choose a date between 2000-01-01 and 2099-12-31." in text(page)


# --------------------------------------------------------------------------- each rule


def test_text_in_the_query_string_is_checked(owner: Client) -> None:
    body = refused(owner.get("/api/v1/conversations/", {"search": "a\x00b"}), "invalid_characters")
    assert "search" in body["message"]
    refused(owner.get("/api/v1/conversations/", {"a\x00": "b"}), "invalid_characters")
    page_refused(owner.get("/app/conversations/", {"q": "a\x00b"}))


@pytest.mark.parametrize(
    "payload",
    [
        '{"title": "\\u0000"}',
        '{"title": "a\\ud800b"}',
        '{"t\\u0000": "x"}',
        '{"title": ["\\udfff"]}',
    ],
)
def test_nul_and_unpaired_surrogates_in_json_are_refused(
    acme: World, owner: Client, payload: str
) -> None:
    before = counts(acme)
    response = owner.post("/api/v1/conversations/", payload, content_type="application/json")
    refused(response, "invalid_characters")
    assert counts(acme) == before


def test_escaped_backslashes_and_paired_surrogates_are_text(acme: World, owner: Client) -> None:
    """`\\\\u0000` is a backslash and 'u0000'; a surrogate pair is one emoji: both are fine."""
    title = "C:\\u0000 plan \U0001f600"
    response = owner.post(
        "/api/v1/conversations/",
        json.dumps({"title": title, "client": acme.client.pk}),
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["title"] == title


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"title": "\xff"}', "invalid_encoding"),
        (b'{"title": NaN}', "malformed_request"),
        (b'{"title": 1e999}', "malformed_request"),
        (b'{"title": ' + b"9" * 5000 + b"}", "malformed_request"),
        (b'{"client": 99999999999999999999}', "number_out_of_range"),
        (b'{"title": "unterminated', "malformed_request"),
    ],
)
def test_unreadable_json_is_refused(owner: Client, payload: bytes, code: str) -> None:
    response = owner.post("/api/v1/conversations/", payload, content_type="application/json")
    body = refused(response, code)
    assert "codec" not in body["message"]  # the product's words, not Python's


@override_settings(INPUT_MAX_JSON_BYTES=1024)
def test_an_oversized_json_body_is_a_413(acme: World, owner: Client) -> None:
    before = counts(acme)
    big = json.dumps({"title": "x" * 2000, "client": acme.client.pk})
    response = owner.post("/api/v1/conversations/", big, content_type="application/json")
    assert "1 KiB" in refused(response, "body_too_large", status=413)["message"]
    assert counts(acme) == before


@pytest.mark.parametrize(
    ("length", "code", "status"),
    [
        ("\u00b2", "malformed_request", 400),  # "²": a digit to str.isdigit(), not to int()
        ("12abc", "malformed_request", 400),
        ("9" * 5000, "body_too_large", 413),  # more digits than int() reads
    ],
)
def test_a_content_length_that_is_not_a_plain_number_is_refused(
    acme: World, owner: Client, length: str, code: str, status: int
) -> None:
    """Django reads Content-Length with int(): the guard reads it first, for every body."""
    before = counts(acme)
    api = owner.post(
        "/api/v1/conversations/", "{}", content_type="application/json", CONTENT_LENGTH=length
    )
    refused(api, code, status)
    page = owner.post(
        f"/app/conversations/{acme.conversations[0].id}/reply",
        "body=Hello",
        content_type="application/x-www-form-urlencoded",
        CONTENT_LENGTH=length,
    )
    page_refused(page, status)
    assert counts(acme) == before


def test_a_nul_in_a_file_name_is_refused(acme: World, owner: Client) -> None:
    before = counts(acme)
    response = owner.post(
        "/api/v1/documents/", {"title": "Board", "file": ("board\x00.txt", b"Agenda.")}
    )
    refused(response, "invalid_characters")
    assert counts(acme) == before


def test_a_nul_in_a_patch_form_body_is_refused(acme: World, owner: Client) -> None:
    conversation = acme.conversations[0]
    response = owner.patch(
        f"/api/v1/conversations/{conversation.id}/",
        "title=a%00b",
        content_type="application/x-www-form-urlencoded",
    )
    refused(response, "invalid_characters")
    with tenant_context(acme.tenant):
        conversation.refresh_from_db()
    assert "\x00" not in conversation.title


def test_the_parser_guards_requests_that_skip_the_middleware() -> None:
    """APIRequestFactory requests reach DRF's parser directly: the same rules hold there."""
    raw = APIRequestFactory().post("/", '{"title": "\\u0000"}', content_type="application/json")
    request = Request(raw, parsers=[GuardedJSONParser()])
    with pytest.raises(ParseError) as refusal:
        _ = request.data
    assert refusal.value.get_codes() == "invalid_characters"


def careless(request: HttpRequest) -> HttpResponse:
    """A view with a bug the input guard cannot see: it saves a conversation, then writes a
    title longer than its column (a queryset update skips model validation)."""
    kept = Conversation.objects.create(client_id=int(request.GET["client"]), title="Half")
    Conversation.objects.filter(pk=kept.pk).update(title="x" * 500)
    return HttpResponse("saved")


handler400 = "config.views.bad_request"
urlpatterns = [
    path("test-only/careless/", careless),
    path("api/test-only/careless/", careless),
    path("", include("config.urls")),
]


@override_settings(ROOT_URLCONF=__name__)
def test_a_value_the_database_refuses_is_a_400_and_nothing_is_half_written(
    acme: World, owner: Client
) -> None:
    """The safety net: a DataError raised in a view is the product's 400 (JSON on the API),
    and what the view wrote before it is rolled back with it."""
    before = counts(acme)
    page = owner.get("/test-only/careless/", {"client": acme.client.pk})
    assert "out of range or too long." in page_refused(page)
    api = owner.get("/api/test-only/careless/", {"client": acme.client.pk})
    refused(api, "invalid_value")
    assert counts(acme) == before
    assert owner.get("/app/conversations/").status_code == 200  # the next request is fine
