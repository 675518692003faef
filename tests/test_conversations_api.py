"""The conversations API: the tenant comes from the principal, never from the request."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator

from conversations.models import Conversation
from tenants.context import tenant_context
from tests.factories import UserFactory, World, build_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme() -> World:
    return build_world("acme")


@pytest.fixture
def globex() -> World:
    return build_world("globex")


def client_for(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


def listed_ids(response: object) -> set[str]:
    return {row["id"] for row in response.json()["results"]}  # type: ignore[attr-defined]


def test_staff_see_their_tenants_conversations_only(acme: World, globex: World) -> None:
    response = client_for(acme.consultant).get("/api/v1/conversations/")
    assert response.status_code == 200, response.content
    assert listed_ids(response) == acme.conversation_ids
    assert (
        listed_ids(client_for(globex.owner).get("/api/v1/conversations/"))
        == globex.conversation_ids
    )


def test_a_client_sees_only_her_own_conversations(acme: World) -> None:
    response = client_for(acme.client).get("/api/v1/conversations/")
    assert listed_ids(response) == {str(acme.conversations[0].id)}
    other = client_for(acme.client).get(f"/api/v1/conversations/{acme.conversations[1].id}/")
    assert other.status_code == 404


def test_another_tenants_conversation_is_a_404_like_a_missing_one(
    acme: World, globex: World
) -> None:
    theirs = client_for(acme.owner).get(f"/api/v1/conversations/{globex.conversations[0].id}/")
    missing = client_for(acme.owner).get(f"/api/v1/conversations/{uuid.uuid4()}/")
    garbage = client_for(acme.owner).get("/api/v1/conversations/not-a-uuid/")
    assert theirs.status_code == missing.status_code == garbage.status_code == 404
    assert (
        theirs.json()
        == missing.json()
        == garbage.json()
        == {
            "code": "not_found",
            "message": "Not found.",
        }
    )
    messages = client_for(acme.owner).get(
        f"/api/v1/conversations/{globex.conversations[0].id}/messages/"
    )
    assert messages.status_code == 404


def test_the_tenant_in_a_request_body_is_ignored(acme: World, globex: World) -> None:
    response = client_for(acme.client).post(
        "/api/v1/conversations/",
        {
            "title": "Where do I start?",
            "tenant": str(globex.tenant.id),
            "tenant_id": str(globex.tenant.id),
        },
        content_type="application/json",
        HTTP_X_TENANT_ID=str(globex.tenant.id),
    )
    assert response.status_code == 201, response.content
    created = response.json()["id"]
    with tenant_context(acme.tenant):
        conversation = Conversation.objects.get(id=created)
        assert conversation.client_id == acme.client.id
    with tenant_context(globex.tenant):
        assert not Conversation.objects.filter(id=created).exists()


def test_staff_open_a_conversation_only_for_a_client_of_their_tenant(
    acme: World, globex: World
) -> None:
    consultant = client_for(acme.consultant)
    ok = consultant.post(
        "/api/v1/conversations/",
        {"title": "Kick-off", "client": acme.client.id},
        content_type="application/json",
    )
    assert ok.status_code == 201
    assert ok.json()["client"] == acme.client.id
    for bad_client in (globex.client.id, acme.owner.id, 999_999):
        bad = consultant.post(
            "/api/v1/conversations/",
            {"title": "x", "client": bad_client},
            content_type="application/json",
        )
        assert bad.status_code == 400
        assert bad.json()["code"] == "invalid"
        assert "client" in bad.json()["fields"]
    missing = consultant.post(
        "/api/v1/conversations/", {"title": "x"}, content_type="application/json"
    )
    assert missing.status_code == 400
    assert "client" in missing.json()["fields"]


def test_posting_and_reading_messages(acme: World) -> None:
    conversation = acme.conversations[0]
    url = f"/api/v1/conversations/{conversation.id}/messages/"
    sent = client_for(acme.client).post(
        url, {"body": "  Thanks!  "}, content_type="application/json"
    )
    assert sent.status_code == 201
    assert sent.json()["sender"] == "client"
    assert sent.json()["body"] == "Thanks!"
    reply = client_for(acme.consultant).post(
        url, {"body": "Welcome."}, content_type="application/json"
    )
    assert reply.json()["sender"] == "consultant"
    bodies = [m["body"] for m in client_for(acme.client).get(url).json()["results"]]
    assert bodies == ["Hello from acme", "Thanks!", "Welcome."]
    empty = client_for(acme.client).post(url, {"body": "   "}, content_type="application/json")
    assert empty.status_code == 400
    assert empty.json()["code"] == "invalid"


def test_the_schema_describes_the_messages_endpoint_as_it_answers() -> None:
    # Found by tests/reliability/test_api_fuzz.py: the schema said GET answers one message
    # (it answers a page of them) and POST a 200 (it is a 201 with the run it started).
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = schema["paths"]["/api/v1/conversations/{id}/messages/"]
    listed = operations["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"$ref": "#/components/schemas/PaginatedMessageList"}
    posted = operations["post"]["responses"]
    assert set(posted) == {"201"}
    reference = posted["201"]["content"]["application/json"]["schema"]["$ref"]
    assert "agent_run" in schema["components"]["schemas"][reference.rsplit("/", 1)[-1]]["required"]


def test_bad_json_is_a_clear_400(acme: World) -> None:
    response = client_for(acme.client).post(
        "/api/v1/conversations/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"


def test_no_principal_or_no_tenant_gets_no_data(acme: World) -> None:
    anonymous = Client().get("/api/v1/conversations/")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "not_authenticated"
    assert anonymous["WWW-Authenticate"] == 'Bearer realm="playbook"'
    staff = UserFactory(username="support@platform.test", tenant=None, is_staff=True)
    response = client_for(staff).get("/api/v1/conversations/")
    assert response.status_code == 403
    assert response.json() == {
        "code": "permission_denied",
        "message": "This account does not belong to a tenant.",
    }


def test_health_endpoints() -> None:
    assert Client().get("/healthz").json() == {"status": "ok"}
    ready = Client().get("/readyz")
    assert ready.status_code == 200, ready.content
    assert ready.json()["checks"] == {
        "database": "ok",
        "database_role": "ok",
        "migrations": "ok",
        "redis": "ok",
    }
