"""Who may call which API endpoint: every routed endpoint, every kind of principal.

No credential is a 401 with `WWW-Authenticate: Bearer`; a principal whose role does not
allow the action is a 403; another tenant's object is a 404 with exactly the body of a
missing one; bad input is a 400 with a stable code, never a 500.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from langgraph.types import Command

from accounts import api_keys
from accounts.models import ApiKey, Membership, SupportSession, User
from agents import runs
from agents.models import AgentRun, Document, TenantEntitlement
from audit.actions import audit_operator
from audit.models import AuditEvent
from conversations.models import Conversation, Message
from tenants.context import tenant_context
from tenants.models import Credential
from tenants.vault.service import create_credential
from tests.factories import UserFactory, World, build_world

pytestmark = pytest.mark.django_db

NOT_FOUND = {"code": "not_found", "message": "Not found."}
DECISIONS = ("approve", "edit", "override", "reject")


@dataclass
class Tenancy:
    world: World
    admin: User  # Membership role "admin"
    outsider: User  # a user of the tenant without a membership
    api_key: ApiKey  # an existing key, the target of the api-keys detail endpoints
    support_session: SupportSession
    audit_event_id: int  # an event of this tenant's log (the keys' creation)
    read_key: str  # plaintext partner keys, one per scope
    write_key: str
    document: Document  # a ready playbook document
    entitlement: TenantEntitlement  # the tenant's own row (a revoke)
    credential: Credential  # a vault credential of the tenant
    # One agent run paused on a draft per review decision (the first client's conversation).
    runs: dict[str, AgentRun] = field(default_factory=dict)
    message_count: int = 0  # messages after setup: conversation openers and the drafts

    @property
    def drafts(self) -> dict[str, Message]:
        return {action: run.draft_message for action, run in self.runs.items() if run.draft_message}

    @property
    def tenant_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.world.tenant.id))


def issue(world: World, *, scope: str, name: str = "Partner") -> tuple[ApiKey, str]:
    with tenant_context(world.tenant):
        issued = api_keys.issue_api_key(
            acting_user=world.owner, name=name, scope=scope, expires_at=None
        )
    return issued.api_key, issued.plaintext


def make_tenancy(slug: str, staff: User) -> Tenancy:
    world = build_world(slug, conversation_title=f"{slug.title()} plan")
    admin = UserFactory.create(username=f"ada@{slug}.test", tenant=world.tenant)
    outsider = UserFactory.create(username=f"otto@{slug}.test", tenant=world.tenant)
    with tenant_context(world.tenant):
        Membership.objects.create(user=admin, role=Membership.Role.ADMIN)
        session = SupportSession.objects.create(staff=staff, reason="Ticket 1: cannot log in")
    target, _ = issue(world, scope="read", name="Target")
    _, read_key = issue(world, scope="read", name="Reader")
    _, write_key = issue(world, scope="write", name="Writer")
    with tenant_context(world.tenant), audit_operator():
        event_id = AuditEvent.objects.values_list("id", flat=True).first()
    assert event_id is not None
    with tenant_context(world.tenant):
        document = Document.objects.create(
            title="Discovery",
            filename="discovery.md",
            content_type="text/markdown",
            size=9,
            sha256="0" * 64,
            source=b"# Pricing",
            status=Document.Status.READY,
            created_by=world.consultant,
        )
        entitlement = TenantEntitlement.objects.create(
            kind="tool", name="search_playbook", effect=TenantEntitlement.Effect.REVOKE
        )
        credential = create_credential(
            acting_user=world.owner, name="crm", kind="http_bearer", secret=f"{slug}-token-" * 3
        )
        conversation = world.conversations[0]
        opener = conversation.messages.get()
        paused = {}
        for action in DECISIONS:
            draft = Message.objects.create(
                conversation=conversation,
                sender=Message.Sender.AGENT,
                status=Message.Status.DRAFT,
                body=f"A draft to {action}",
                citations=[{"n": 1, "document": str(document.id), "title": "Discovery"}],
            )
            paused[action] = AgentRun.objects.create(
                conversation=conversation,
                trigger_message=opener,
                requested_by=world.client,
                status=AgentRun.Status.AWAITING_REVIEW,
                draft_message=draft,
            )
        message_count = Message.objects.count()
    return Tenancy(
        world,
        admin,
        outsider,
        target,
        session,
        event_id,
        read_key,
        write_key,
        document,
        entitlement,
        credential,
        paused,
        message_count,
    )


class ResumeWithoutGraph:
    """Stands in for the LangGraph supervisor when a decision resumes one of the fixture's
    runs (made with the ORM, so without checkpoints; under `django_db` the graph's thread
    pool could not see the test's uncommitted rows anyway). It applies the decision as the
    graph's review step does. Real runs and resumes: tests/test_agents.py."""

    def __init__(self, run: AgentRun, resolved: Any, checkpointer: Any) -> None:
        self.run = run

    def invoke(self, command: Command[Any], config: Any) -> None:
        decision = command.resume
        assert isinstance(decision, dict)
        runs.apply_review(self.run, decision)


@pytest.fixture(autouse=True)
def resume_without_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "build_graph", ResumeWithoutGraph)


@pytest.fixture
def staff() -> User:
    return UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)


@pytest.fixture
def acme(staff: User) -> Tenancy:
    return make_tenancy("acme", staff)


@pytest.fixture
def globex(staff: User) -> Tenancy:
    return make_tenancy("globex", staff)


def session_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def key_client(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def call(client: Client, method: str, url: str, body: Any = None) -> Any:
    if method == "GET":
        return client.get(url)
    if method == "DELETE":
        return client.delete(url)
    if method == "POST" and isinstance(body, dict) and "file" in body:  # a multipart upload
        upload = body["file"]
        upload.seek(0)
        return client.post(url, body)
    if method in ("PUT", "PATCH"):
        return client.generic(method, url, json.dumps(body or {}), content_type="application/json")
    return client.post(url, json.dumps(body or {}), content_type="application/json")


# Every routed endpoint: (method, path template). Templates name the object they need.
ENDPOINTS: list[tuple[str, str]] = [
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/conversations/"),
    ("POST", "/api/v1/conversations/"),
    ("GET", "/api/v1/conversations/{conversation}/"),
    ("GET", "/api/v1/conversations/{conversation}/messages/"),
    ("POST", "/api/v1/conversations/{conversation}/messages/"),
    ("GET", "/api/v1/api-keys/"),
    ("POST", "/api/v1/api-keys/"),
    ("GET", "/api/v1/api-keys/{api_key}/"),
    ("DELETE", "/api/v1/api-keys/{api_key}/"),
    ("GET", "/api/v1/support-sessions/"),
    ("GET", "/api/v1/support-sessions/{support_session}/"),
    ("GET", "/api/v1/audit/events/"),
    ("GET", "/api/v1/audit/events/{audit_event}/"),
    ("GET", "/api/v1/audit/export"),
    ("GET", "/api/v1/documents/"),
    ("POST", "/api/v1/documents/"),
    ("GET", "/api/v1/documents/{document}/"),
    ("POST", "/api/v1/documents/{document}/reingest/"),
    ("DELETE", "/api/v1/documents/{document}/"),
    ("GET", "/api/v1/agent-runs/"),
    ("GET", "/api/v1/agent-runs/{agent_run}/"),
    ("GET", "/api/v1/registry/"),
    ("GET", "/api/v1/registry/entitlements/"),
    ("POST", "/api/v1/registry/entitlements/"),
    ("GET", "/api/v1/registry/entitlements/{entitlement}/"),
    ("PUT", "/api/v1/registry/entitlements/{entitlement}/"),
    ("PATCH", "/api/v1/registry/entitlements/{entitlement}/"),
    ("DELETE", "/api/v1/registry/entitlements/{entitlement}/"),
    ("GET", "/api/v1/review-queue/"),
    ("GET", "/api/v1/review-queue/{draft}/"),
    *[("POST", f"/api/v1/review-queue/{{draft}}/{action}/") for action in DECISIONS],
    ("GET", "/api/v1/credentials/"),
    ("POST", "/api/v1/credentials/"),
    ("GET", "/api/v1/credentials/{credential}/"),
    ("POST", "/api/v1/credentials/{credential}/rotate/"),
    ("DELETE", "/api/v1/credentials/{credential}/"),
    ("GET", "/api/v1/usage/"),
]
DETAIL_ENDPOINTS = [e for e in ENDPOINTS if "{" in e[1]]


def decision_of(template: str) -> str:
    """The review decision a review-queue template makes ("approve" for the others)."""
    last = template.rstrip("/").rsplit("/", 1)[-1]
    return last if last in DECISIONS else "approve"


def url_for(template: str, tenancy: Tenancy) -> str:
    return template.format(
        conversation=tenancy.world.conversations[0].id,  # the first client's conversation
        api_key=tenancy.api_key.id,
        support_session=tenancy.support_session.id,
        audit_event=tenancy.audit_event_id,
        document=tenancy.document.id,
        agent_run=tenancy.runs["approve"].id,  # on the first client's conversation
        entitlement=tenancy.entitlement.id,
        draft=tenancy.drafts[decision_of(template)].id,  # each decision its own draft
        credential=tenancy.credential.id,
    )


def body_for(method: str, template: str, tenancy: Tenancy) -> dict[str, Any] | None:
    if method in ("PUT", "PATCH"):  # an entitlement
        if method == "PATCH":
            return {"config": {"reason": "Not in this plan"}}
        return {"kind": "tool", "name": "search_playbook", "effect": "grant", "config": {}}
    if method != "POST":
        return None
    if template.endswith("messages/"):
        return {"body": "A question"}
    if "conversations" in template:
        return {"title": "New topic", "client": tenancy.world.client.id}
    if template == "/api/v1/documents/":
        notes = b"# Notes\n\nAnswer within two working days."
        return {"file": SimpleUploadedFile("notes.md", notes, content_type="text/markdown")}
    if template.endswith("reingest/"):
        return None
    if template.startswith("/api/v1/registry/entitlements/"):
        return {"kind": "prompt", "name": "system", "config": {"text": "Be brief."}}
    if template.startswith("/api/v1/review-queue/"):
        return {"text": "The consultant's answer.", "note": "I will call her."}
    if template.endswith("rotate/"):
        return {"secret": "rotated-token-0123456789"}
    if template == "/api/v1/credentials/":
        return {
            "name": f"vendor-{uuid.uuid4().hex[:8]}",
            "kind": "http_bearer",
            "secret": "vendor-token-0123456789",
        }
    return {"name": "New integration", "scope": "read"}


def test_the_matrix_covers_every_routed_endpoint() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    routed = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method in operations
    }
    listed = {
        (
            method,
            template.replace("{conversation}", "{id}")
            .replace("{api_key}", "{id}")
            .replace("{support_session}", "{id}")
            .replace("{audit_event}", "{id}")
            .replace("{document}", "{id}")
            .replace("{agent_run}", "{id}")
            .replace("{entitlement}", "{id}")
            .replace("{draft}", "{id}")
            .replace("{credential}", "{id}"),
        )
        for method, template in ENDPOINTS
    }
    assert routed == listed


# --------------------------------------------------------------------------- 401 and 403


@pytest.mark.parametrize(("method", "template"), ENDPOINTS)
def test_no_credential_is_a_401_with_a_bearer_challenge(
    acme: Tenancy, method: str, template: str
) -> None:
    response = call(Client(), method, url_for(template, acme), body_for(method, template, acme))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == "not_authenticated"
    assert set(body) == {"code", "message"}


@pytest.mark.parametrize(("method", "template"), ENDPOINTS)
def test_platform_staff_without_a_tenant_get_no_tenant_data(
    acme: Tenancy, staff: User, method: str, template: str
) -> None:
    response = call(
        session_client(staff), method, url_for(template, acme), body_for(method, template, acme)
    )
    if template == "/api/v1/me":
        assert response.status_code == 200
        assert response.json()["tenant"] is None
        assert response.json()["role"] is None
        return
    assert response.status_code == 403
    assert response.json() == {
        "code": "permission_denied",
        "message": "This account does not belong to a tenant.",
    }


OK = {"GET": 200, "POST": 201, "DELETE": 204, "PUT": 200, "PATCH": 200}
TENANT_ADMIN_ONLY = (
    "/api/v1/api-keys/",
    "/api/v1/support-sessions/",
    "/api/v1/audit/",
    "/api/v1/credentials/",
    "/api/v1/usage/",
)
ADMINS = frozenset({"owner", "admin"})
TEAM = ADMINS | {"consultant"}
KEYS = frozenset({"read_key", "write_key"})


def allowed_principals(method: str, template: str) -> frozenset[str]:
    """The viewsets' `roles` tables (API keys are further limited by scope)."""
    if template.startswith(TENANT_ADMIN_ONLY):
        return ADMINS
    if template.startswith("/api/v1/documents/"):  # the playbook: never clients
        return TEAM if method == "DELETE" else TEAM | KEYS
    if template.startswith("/api/v1/registry/entitlements/"):
        return TEAM if method == "GET" else ADMINS
    if template.startswith("/api/v1/registry/"):
        return TEAM | KEYS
    if template.startswith("/api/v1/review-queue/"):
        return TEAM
    return TEAM | {"client"} | KEYS  # conversations, agent runs


def ok_status(method: str, template: str) -> int:
    if template.endswith("reingest/"):
        return 202
    if template.startswith("/api/v1/review-queue/") and method == "POST":
        return 200  # a decision
    if template.endswith("rotate/"):
        return 200
    return OK[method]


def expected_status(principal: str, method: str, template: str) -> int:
    if template == "/api/v1/me":
        return 200
    if principal == "outsider":  # a user of the tenant with no role in it
        return 403
    if principal not in allowed_principals(method, template):
        return 403
    if principal == "read_key" and method != "GET":
        return 403
    return ok_status(method, template)


PRINCIPALS = ["owner", "admin", "consultant", "client", "outsider", "read_key", "write_key"]


def client_as(principal: str, tenancy: Tenancy) -> Client:
    if principal.endswith("_key"):
        return key_client(getattr(tenancy, principal))
    user = getattr(tenancy, principal, None) or getattr(tenancy.world, principal)
    return session_client(user)


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_roles_and_scopes_decide_what_each_principal_may_do(acme: Tenancy, principal: str) -> None:
    actual: dict[str, int] = {}
    expected: dict[str, int] = {}
    for method, template in ENDPOINTS:  # DELETE before the lists that follow it is harmless
        response = call(
            client_as(principal, acme),
            method,
            url_for(template, acme),
            body_for(method, template, acme),
        )
        name = f"{method} {template}"
        actual[name] = response.status_code
        expected[name] = expected_status(principal, method, template)
        if response.status_code == 403:
            assert response.json()["code"] == "permission_denied", name
    assert actual == expected


def test_an_api_key_cannot_manage_api_keys_even_with_write_scope(acme: Tenancy) -> None:
    writer = key_client(acme.write_key)
    assert call(writer, "POST", "/api/v1/api-keys/", {"name": "escalate"}).status_code == 403
    assert writer.delete(f"/api/v1/api-keys/{acme.api_key.id}/").status_code == 403
    with tenant_context(acme.tenant_id):
        assert not ApiKey.objects.filter(name="escalate").exists()
        assert ApiKey.objects.get(id=acme.api_key.id).revoked_at is None


# --------------------------------------------------------------------------- 404, never a hint


# API keys reach conversations, documents and agent runs (the rest is a 403 for them).
KEY_REACHABLE = ("/api/v1/conversations/", "/api/v1/documents/", "/api/v1/agent-runs/")
CROSS_TENANT_CASES = [("owner", m, t) for m, t in DETAIL_ENDPOINTS] + [
    ("write_key", m, t)
    for m, t in DETAIL_ENDPOINTS
    if t.startswith(KEY_REACHABLE) and not (t.startswith("/api/v1/documents/") and m == "DELETE")
]


@pytest.mark.parametrize(("principal", "method", "template"), CROSS_TENANT_CASES)
def test_another_tenants_object_is_a_404_like_a_missing_one(
    acme: Tenancy, globex: Tenancy, principal: str, method: str, template: str
) -> None:
    client = client_as(principal, acme)
    body = body_for(method, template, acme)
    theirs = call(client, method, url_for(template, globex), body)
    missing_id = uuid.uuid4()
    missing_url = template.format(
        credential=missing_id,
        conversation=missing_id,
        api_key=missing_id,
        support_session=missing_id,
        audit_event=2**62,
        document=missing_id,
        agent_run=missing_id,
        entitlement=missing_id,
        draft=missing_id,
    )
    missing = call(client, method, missing_url, body)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json() == NOT_FOUND
    assert theirs.content == missing.content

    # And nothing happened to the other tenant's data.
    with tenant_context(globex.tenant_id):
        assert ApiKey.objects.get(id=globex.api_key.id).revoked_at is None
        assert Message.objects.count() == globex.message_count
        document = Document.objects.get(id=globex.document.id)
        assert (document.status, document.title) == (Document.Status.READY, "Discovery")
        entitlement = TenantEntitlement.objects.get(id=globex.entitlement.id)
        assert (entitlement.effect, entitlement.config) == ("revoke", {})
        assert set(
            Message.objects.filter(sender=Message.Sender.AGENT).values_list("status", flat=True)
        ) == {Message.Status.DRAFT}
        assert set(AgentRun.objects.values_list("status", flat=True)) == {
            AgentRun.Status.AWAITING_REVIEW
        }


def test_a_client_cannot_reach_another_clients_conversation(acme: Tenancy) -> None:
    theirs = acme.world.conversations[1]  # the other client's
    assert theirs.client_id == acme.world.other_client.id
    client = session_client(acme.world.client)
    missing = uuid.uuid4()
    for suffix in ("", "messages/"):
        for method in ("GET", "POST"):
            if suffix == "" and method == "POST":
                continue
            body = {"body": "Let me in"} if method == "POST" else None
            response = call(client, method, f"/api/v1/conversations/{theirs.id}/{suffix}", body)
            control = call(client, method, f"/api/v1/conversations/{missing}/{suffix}", body)
            assert response.status_code == 404, (method, suffix)
            assert response.content == control.content
    listed = client.get("/api/v1/conversations/").json()["results"]
    assert [row["id"] for row in listed] == [str(acme.world.conversations[0].id)]
    with tenant_context(acme.tenant_id):
        assert not Message.objects.filter(conversation=theirs, body="Let me in").exists()


def test_a_client_sees_her_own_agent_runs_only_and_never_a_draft(acme: Tenancy) -> None:
    mine = session_client(acme.world.client)
    listed = mine.get("/api/v1/agent-runs/").json()["results"]
    assert {row["id"] for row in listed} == {str(run.id) for run in acme.runs.values()}
    for row in listed:  # every run is waiting for review: no answer for her yet
        assert (row["status"], row["output"], row["message"]) == ("awaiting_review", "", None)
    team = session_client(acme.world.consultant).get(f"/api/v1/agent-runs/{acme.runs['edit'].id}/")
    assert team.json()["output"] == "A draft to edit"
    assert team.json()["message"] == str(acme.drafts["edit"].id)

    other = session_client(acme.world.other_client)
    assert other.get("/api/v1/agent-runs/").json()["results"] == []
    theirs = other.get(f"/api/v1/agent-runs/{acme.runs['approve'].id}/")
    control = other.get(f"/api/v1/agent-runs/{uuid.uuid4()}/")
    assert theirs.status_code == control.status_code == 404
    assert theirs.content == control.content


# --------------------------------------------------------------------------- API keys


def test_api_key_lifecycle(acme: Tenancy, globex: Tenancy) -> None:
    owner = session_client(acme.world.owner)
    created = call(owner, "POST", "/api/v1/api-keys/", {"name": "  Zapier  ", "scope": "read"})
    assert created.status_code == 201, created.content
    shown = created.json()
    key = shown["key"]
    assert key.startswith(f"pbk_{acme.tenant_id.hex}_{shown['prefix']}.")
    assert shown["name"] == "Zapier"
    assert shown["scope"] == "read"
    assert shown["is_active"] is True
    assert "key_hash" not in shown
    with tenant_context(acme.tenant_id):
        stored = ApiKey.objects.get(id=shown["id"])
    assert key not in str(stored.__dict__)  # only the hash is stored

    # Shown once: never again in a list or a detail, neither the key nor its hash.
    for response in (owner.get("/api/v1/api-keys/"), owner.get(f"/api/v1/api-keys/{shown['id']}/")):
        assert response.status_code == 200
        text = response.content.decode()
        assert key not in text
        assert key.split(".")[1] not in text
        assert stored.key_hash not in text
        assert '"key"' not in text and "key_hash" not in text

    reader = key_client(key)
    me = reader.get("/api/v1/me").json()
    assert (me["kind"], me["scope"], me["auth"], me["tenant"]["slug"]) == (
        "api_key",
        "read",
        "api_key",
        "acme",
    )
    listed = reader.get("/api/v1/conversations/")
    assert listed.status_code == 200
    assert {row["id"] for row in listed.json()["results"]} == acme.world.conversation_ids
    conversation = acme.world.conversations[0]
    messages_url = f"/api/v1/conversations/{conversation.id}/messages/"
    assert reader.get(messages_url).status_code == 200
    refused = call(reader, "POST", messages_url, {"body": "From the integration"})
    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_denied"
    refused = call(
        reader, "POST", "/api/v1/conversations/", {"title": "x", "client": acme.world.client.id}
    )
    assert refused.status_code == 403
    # The other tenant's data is not there for this key.
    other = reader.get(f"/api/v1/conversations/{globex.world.conversations[0].id}/")
    assert other.status_code == 404

    revoked = owner.delete(f"/api/v1/api-keys/{shown['id']}/")
    assert revoked.status_code == 204
    after = reader.get("/api/v1/conversations/")
    assert after.status_code == 401
    assert after.json()["code"] == "authentication_failed"
    assert after["WWW-Authenticate"] == 'Bearer realm="playbook", error="invalid_token"'
    detail = owner.get(f"/api/v1/api-keys/{shown['id']}/").json()
    assert detail["is_active"] is False
    assert detail["revoked_at"] is not None
    with tenant_context(acme.tenant_id), audit_operator():
        actions = set(
            AuditEvent.objects.filter(resource_id=shown["id"]).values_list("action", flat=True)
        )
    assert actions == {"api_key.created", "api_key.revoked"}


def test_a_write_key_writes_into_its_own_tenant_only(acme: Tenancy, globex: Tenancy) -> None:
    writer = key_client(acme.write_key)
    created = writer.post(
        "/api/v1/conversations/",
        {
            "title": "Synced from CRM",
            "client": acme.world.client.id,
            "tenant": str(globex.tenant_id),
        },
        content_type="application/json",
        HTTP_X_TENANT_ID=str(globex.tenant_id),
    )
    assert created.status_code == 201, created.content
    posted = call(
        writer, "POST", f"/api/v1/conversations/{created.json()['id']}/messages/", {"body": "Hi"}
    )
    assert posted.status_code == 201
    with tenant_context(acme.tenant_id):
        assert Conversation.objects.filter(id=created.json()["id"]).exists()
    with tenant_context(globex.tenant_id):
        assert not Conversation.objects.filter(id=created.json()["id"]).exists()
    # A client of another tenant is not a valid target.
    bad = call(
        writer, "POST", "/api/v1/conversations/", {"title": "x", "client": globex.world.client.id}
    )
    assert bad.status_code == 400
    assert "client" in bad.json()["fields"]


def tampered(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


@pytest.mark.parametrize(
    "variant",
    [
        "expired",
        "revoked",
        "tampered_secret",
        "other_tenant_in_key",
        "another_keys_prefix",
        "unknown_tenant",
        "truncated",
        "empty",
        "garbage_jwt",
    ],
)
def test_a_bad_bearer_credential_is_a_401(acme: Tenancy, globex: Tenancy, variant: str) -> None:
    key_obj, key = issue(acme.world, scope="write")
    tenant_hex = acme.tenant_id.hex
    prefix, secret = key.removeprefix(f"pbk_{tenant_hex}_").split(".")
    if variant in ("expired", "revoked"):
        field = "expires_at" if variant == "expired" else "revoked_at"
        with tenant_context(acme.tenant_id):
            ApiKey.objects.filter(id=key_obj.id).update(
                **{field: timezone.now() - timedelta(minutes=1)}
            )
    token = {
        "expired": key,
        "revoked": key,
        "tampered_secret": tampered(key),
        "other_tenant_in_key": f"pbk_{globex.tenant_id.hex}_{prefix}.{secret}",
        "another_keys_prefix": f"pbk_{tenant_hex}_{acme.api_key.prefix}.{secret}",
        "unknown_tenant": f"pbk_{uuid.uuid4().hex}_{prefix}.{secret}",
        "truncated": key[:-5],
        "empty": "",
        "garbage_jwt": "abc.def.ghi",
    }[variant]
    # The browser session of the key's owner does not rescue a bad bearer credential.
    client = session_client(acme.world.owner)
    for method, template in (
        ("GET", "/api/v1/conversations/"),
        ("POST", "/api/v1/conversations/"),
        ("GET", "/api/v1/me"),
    ):
        response = client.generic(
            method,
            url_for(template, acme),
            json.dumps(body_for(method, template, acme) or {}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        assert response.status_code == 401, (variant, template)
        assert response["WWW-Authenticate"] == 'Bearer realm="playbook", error="invalid_token"'
        assert response.json()["code"] == "authentication_failed"
    # The genuine key (when not expired or revoked) still works: the test broke only the token.
    if variant not in ("expired", "revoked"):
        assert key_client(key).get("/api/v1/conversations/").status_code == 200
    with tenant_context(acme.tenant_id):
        assert not Conversation.objects.filter(title="New topic").exists()


# --------------------------------------------------------------------------- bad input


def post_raw(client: Client, url: str, data: str, content_type: str = "application/json") -> Any:
    return client.post(url, data, content_type=content_type)


@pytest.mark.parametrize(
    ("path", "data", "code", "field"),
    [
        ("/api/v1/conversations/", "{not json", "malformed_request", None),
        ("/api/v1/conversations/", "[]", "invalid", "non_field_errors"),
        ("/api/v1/conversations/", '{"client": 1}', "invalid", "title"),
        ("/api/v1/conversations/", json.dumps({"title": "x" * 1000}), "invalid", "title"),
        ("/api/v1/conversations/", json.dumps({"title": "x", "client": "me"}), "invalid", "client"),
        ("{messages}", "{not json", "malformed_request", None),
        ("{messages}", '"hello"', "invalid", "non_field_errors"),
        ("{messages}", "{}", "invalid", "body"),
        ("{messages}", json.dumps({"body": "x" * 20_001}), "invalid", "body"),
        ("{messages}", json.dumps({"body": ["a", "b"]}), "invalid", "body"),
        ("/api/v1/api-keys/", "{not json", "malformed_request", None),
        ("/api/v1/api-keys/", "null", "invalid", "non_field_errors"),
        ("/api/v1/api-keys/", json.dumps({"name": "   "}), "invalid", "name"),
        ("/api/v1/api-keys/", json.dumps({"name": "x" * 101}), "invalid", "name"),
        ("/api/v1/api-keys/", json.dumps({"name": "x", "scope": "admin"}), "invalid", "scope"),
        (
            "/api/v1/api-keys/",
            json.dumps({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "invalid",
            "expires_at",
        ),
        (
            "/api/v1/api-keys/",
            json.dumps({"name": "x", "expires_at": "tomorrow"}),
            "invalid",
            "expires_at",
        ),
    ],
)
def test_bad_input_is_a_400_with_a_stable_code(
    acme: Tenancy, path: str, data: str, code: str, field: str | None
) -> None:
    url = path.format(messages=f"/api/v1/conversations/{acme.world.conversations[0].id}/messages/")
    response = post_raw(session_client(acme.world.owner), url, data)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    if field is not None:
        assert field in body["fields"]
    with tenant_context(acme.tenant_id):
        assert ApiKey.objects.count() == 3  # the fixture's keys, nothing new
        assert Conversation.objects.count() == 2
        assert Message.objects.count() == acme.message_count


def test_a_form_body_is_refused_as_unsupported(acme: Tenancy) -> None:
    response = post_raw(
        session_client(acme.world.owner), "/api/v1/api-keys/", "name=x", "text/plain"
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_a_cookie_session_needs_a_csrf_token_and_a_bearer_key_does_not(acme: Tenancy) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(acme.world.owner)
    forged = browser.post(
        "/api/v1/api-keys/", {"name": "From another site"}, content_type="application/json"
    )
    assert forged.status_code == 403
    assert forged.json()["code"] == "permission_denied"
    assert "CSRF" in forged.json()["message"]
    partner = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {acme.write_key}")
    created = partner.post(
        "/api/v1/conversations/",
        {"title": "From the CRM", "client": acme.world.client.id},
        content_type="application/json",
    )
    assert created.status_code == 201
    with tenant_context(acme.tenant_id):
        assert not ApiKey.objects.filter(name="From another site").exists()
