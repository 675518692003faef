"""Agent runs end to end: retrieval, entitled tools, the registry, review, policies.

Runs go through the real product: a client's message is posted through the API, the run is
queued on commit and executed by Celery (eagerly, in this thread), the LangGraph
supervisor checkpoints into tenant tables from its own thread pool (so these tests use
`live_db`: committed data), and the consultant's decision resumes the paused run. Chat
models are langchain-core's scripted fakes injected with `agents.llm.use_chat_model`, or
the built-in offline responder when no model is injected.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client, override_settings
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import ToolCall
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable
from pydantic import Field

from accounts import api_keys
from accounts.models import User
from agents import registry, runs
from agents.checkpointer import TenantCheckpointSaver
from agents.llm import use_chat_model
from agents.models import AgentRun, Document, PlanEntitlement, TenantEntitlement
from agents.runs import ReviewError, review_draft
from audit.actions import audit_operator
from audit.models import AuditEvent
from billing.models import UsageEvent
from config.celery import app as celery_app
from conversations.models import Correction, Message
from tenants.context import platform_context, tenant_context
from tenants.models import Tenant
from tests.factories import World, build_world, set_plan

PLAN_DEFAULTS = importlib.import_module("agents.migrations.0002_plan_defaults")

DOCUMENTS = "/api/v1/documents/"
QUEUE = "/api/v1/review-queue/"
ENTITLEMENTS = "/api/v1/registry/entitlements/"

PLAYBOOK_MD = """# Discovery call playbook

Start every discovery call by asking the client what success looks like in twelve months.
Write their words down verbatim; they become the goals section of the proposal.

## Pricing conversations

Never quote a price on the first call. Offer three packages: a diagnostic, a quarterly
retainer and a transformation programme. Anchor on the transformation programme first.

## Follow-up

Send the summary within 24 hours, with the three packages and one recommended next step.
"""
PRICING_PASSAGE = "Never quote a price on the first call."


# --------------------------------------------------------------------------- fixtures


def seed_plan_defaults() -> None:
    with platform_context():
        for plan, kind, name, config in PLAN_DEFAULTS.ROWS:
            PlanEntitlement.objects.update_or_create(
                plan=plan, kind=kind, name=name, defaults={"config": config}
            )


@pytest.fixture
def plan_defaults(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The plans' default entitlements (a data migration). `live_db` truncates every table
    of the agents app, this platform table included, so put them back before and after."""
    with django_db_blocker.unblock():
        seed_plan_defaults()
    yield
    with django_db_blocker.unblock():
        seed_plan_defaults()


@pytest.fixture
def eager() -> Iterator[None]:
    """Celery runs tasks inline (the app's conf is what `delay` reads)."""
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.task_eager_propagates)
    conf.task_always_eager, conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_eager_propagates = previous


@pytest.fixture
def stack(plan_defaults: None, live_db: None, eager: None) -> None:
    """Committed data, eager Celery, plan defaults (torn down in reverse: the defaults are
    put back after live_db's truncation)."""


@pytest.fixture
def acme(stack: None) -> World:
    return build_world("acme")


@pytest.fixture
def globex(stack: None) -> World:
    return build_world("globex")


class ScriptedModel(FakeMessagesListChatModel):
    """A scripted chat model that records what it was sent and which tools were bound."""

    model_name: str = "scripted-model"
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[str] = Field(default_factory=list)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        self.bound = [tool["function"]["name"] for tool in tools if isinstance(tool, dict)]
        return self


class BrokenModel(ScriptedModel):
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        raise ConnectionError("the provider is down")


def tool_call(name: str, call_id: str, **args: Any) -> ToolCall:
    return ToolCall(name=name, args=args, id=call_id, type="tool_call")


def calls(*tool_calls: ToolCall) -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=list(tool_calls),
        usage_metadata={"input_tokens": 100, "output_tokens": 10, "total_tokens": 110},
    )


def answer(text: str) -> AIMessage:
    return AIMessage(
        content=text,
        usage_metadata={"input_tokens": 200, "output_tokens": 40, "total_tokens": 240},
    )


def scripted(*responses: AIMessage) -> ScriptedModel:
    return ScriptedModel(responses=list(responses))


# --------------------------------------------------------------------------- helpers


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def upload_playbook(world: World, text: str = PLAYBOOK_MD, name: str = "discovery.md") -> str:
    response = logged_in(world.consultant).post(
        DOCUMENTS, {"file": SimpleUploadedFile(name, text.encode(), content_type="text/markdown")}
    )
    assert response.status_code == 201, response.content
    document_id = str(response.json()["id"])
    with tenant_context(world.tenant):
        assert Document.objects.get(id=document_id).status == Document.Status.READY
    return document_id


def ask(world: World, question: str, *, who: User | None = None) -> tuple[str, str]:
    """The client posts a question; the run executes before the response returns.
    Returns (run id, trigger message id)."""
    user = who or world.client
    conversation = next(c for c in world.conversations if c.client_id == user.pk)
    response = logged_in(user).post(
        f"/api/v1/conversations/{conversation.id}/messages/",
        {"body": question},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["agent_run"], body
    return str(body["agent_run"]), str(body["id"])


def get_run(world: World, run_id: str) -> AgentRun:
    with tenant_context(world.tenant):
        return AgentRun.objects.select_related("draft_message", "trigger_message").get(id=run_id)


def draft_of(world: World, run_id: str) -> Message:
    run = get_run(world, run_id)
    assert run.draft_message is not None, run.status
    return run.draft_message


def audit_events(world: World, action: str) -> list[AuditEvent]:
    with tenant_context(world.tenant), audit_operator():
        return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def usage(world: World, run_id: str) -> list[UsageEvent]:
    with tenant_context(world.tenant):
        return list(UsageEvent.objects.filter(agent_run_id=run_id).order_by("created_at"))


def client_messages(world: World, who: User | None = None) -> list[dict[str, Any]]:
    user = who or world.client
    conversation = next(c for c in world.conversations if c.client_id == user.pk)
    response = logged_in(user).get(f"/api/v1/conversations/{conversation.id}/messages/")
    assert response.status_code == 200
    return list(response.json()["results"])


def queue(world: World) -> list[dict[str, Any]]:
    response = logged_in(world.consultant).get(QUEUE)
    assert response.status_code == 200
    return list(response.json()["results"])


def decide(world: World, message_id: str, action: str, **body: str) -> Any:
    return logged_in(world.consultant).post(
        f"{QUEUE}{message_id}/{action}/", body, content_type="application/json"
    )


def set_policy(world: World, policy: str) -> None:
    tenant = Tenant.objects.get(id=world.tenant.id)
    tenant.review_policy = policy
    with tenant_context(tenant):  # the tenant's own setting: written in its context
        tenant.save(update_fields=["review_policy", "updated_at"])


def tool_messages(model: ScriptedModel, call: int) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in model.seen[call] if isinstance(m, ToolMessage)}


# --------------------------------------------------------------------------- 1. retrieval


def test_a_question_gets_a_cited_draft_from_the_playbook_with_usage_recorded(
    acme: World,
) -> None:
    document_id = upload_playbook(acme)
    model = scripted(
        calls(tool_call("search_playbook", "call_1", query="pricing packages")),
        answer("Never quote on the first call; offer the three packages [1]."),
    )
    with use_chat_model(model):
        run_id, trigger_id = ask(acme, "How should I talk about pricing with a new client?")

    run = get_run(acme, run_id)
    assert run.status == AgentRun.Status.AWAITING_REVIEW
    assert run.model_name == "scripted-model"
    assert str(run.trigger_message_id) == trigger_id
    assert run.requested_by_id == acme.client.pk
    draft = run.draft_message
    assert draft is not None
    assert draft.status == Message.Status.DRAFT
    assert draft.sender == Message.Sender.AGENT
    assert draft.body == "Never quote on the first call; offer the three packages [1]."
    assert draft.citations
    assert {c["document"] for c in draft.citations} == {document_id}
    assert {c["title"] for c in draft.citations} == {"discovery"}
    assert [c["n"] for c in draft.citations] == list(range(1, len(draft.citations) + 1))

    # Only the tenant's entitled tools were bound (starter: no http_request).
    assert model.bound == ["request_human_handoff", "search_playbook"]
    # The model was prompted with the retrieved passages, then got the tool's result.
    assert len(model.seen) == 2
    prompt = model.seen[0][0]
    assert isinstance(prompt, SystemMessage)
    assert "Playbook passages:" in prompt.text
    assert PRICING_PASSAGE in prompt.text
    assert model.seen[0][-1].content == "How should I talk about pricing with a new client?"
    result = tool_messages(model, 1)["call_1"]
    assert result.status == "success"
    assert PRICING_PASSAGE in str(result.content)

    # One usage event per model call and per tool call, attributed to the client and run.
    events = usage(acme, run_id)
    assert sorted((e.kind, e.model, e.tool) for e in events) == [
        ("model", "scripted-model", ""),
        ("model", "scripted-model", ""),
        ("tool", "", "search_playbook"),
    ]
    assert {e.user_id for e in events} == {acme.client.pk}
    assert {str(e.agent_run_id) for e in events} == {run_id}
    model_events = [e for e in events if e.kind == UsageEvent.Kind.MODEL]
    assert sorted((e.input_tokens, e.output_tokens) for e in model_events) == [
        (100, 10),
        (200, 40),
    ]

    [called] = audit_events(acme, "agent.tool_called")
    assert (called.resource_id, called.agent_run_id) == ("search_playbook", run_id)
    assert called.context["status"] == "success"
    [drafted] = audit_events(acme, "agent.draft_created")
    assert drafted.resource_id == str(draft.id)
    assert drafted.agent_run_id == run_id


# --------------------------------------------------------------------------- 2. tools


def test_a_tool_the_tenant_is_not_entitled_to_is_refused_and_audited(acme: World) -> None:
    document_id = upload_playbook(acme)
    model = scripted(
        calls(
            tool_call("http_request", "call_http", query="all client records"),
            tool_call("delete_all_data", "call_delete", confirm=True),
            tool_call("search_playbook", "call_search", query="follow-up summary"),
        ),
        answer("Send the summary within 24 hours [1]."),
    )
    with use_chat_model(model):
        run_id, _ = ask(acme, "What do I send after the call?")

    # The run went on normally: refusals are answers to the model, not failures.
    run = get_run(acme, run_id)
    assert run.status == AgentRun.Status.AWAITING_REVIEW
    assert run.error == ""
    assert draft_of(acme, run_id).body == "Send the summary within 24 hours [1]."
    assert "http_request" not in model.bound  # starter has no http_request

    results = tool_messages(model, 1)
    assert set(results) == {"call_http", "call_delete", "call_search"}
    for call_id, name in (("call_http", "http_request"), ("call_delete", "delete_all_data")):
        assert results[call_id].status == "error"
        assert results[call_id].content == (
            f"Refused: the tool '{name}' is not available to this assistant."
        )
    assert results["call_search"].status == "success"
    assert "24 hours" in str(results["call_search"].content)
    assert {c["document"] for c in draft_of(acme, run_id).citations} == {document_id}

    refused = audit_events(acme, "agent.tool_refused")
    assert sorted(e.resource_id for e in refused) == ["delete_all_data", "http_request"]
    for event in refused:
        assert event.agent_run_id == run_id
        assert event.actor_type == "agent"
        assert event.resource_type == "tool"
        assert event.context["reason"] == "not entitled"
    assert {e.resource_id: e.context["arguments"] for e in refused}["delete_all_data"] == {
        "confirm": True
    }
    [called] = audit_events(acme, "agent.tool_called")
    assert (called.resource_id, called.agent_run_id) == ("search_playbook", run_id)
    # Refused calls cost nothing: usage only for the executed tool.
    tools = [e.tool for e in usage(acme, run_id) if e.kind == UsageEvent.Kind.TOOL]
    assert tools == ["search_playbook"]


def test_a_revoked_plan_tool_is_neither_bound_nor_executed(acme: World) -> None:
    with tenant_context(acme.tenant):
        TenantEntitlement.objects.create(
            kind="tool", name="search_playbook", effect=TenantEntitlement.Effect.REVOKE
        )
    upload_playbook(acme)
    model = scripted(
        calls(tool_call("search_playbook", "call_1", query="pricing")),
        answer("I cannot search, but here is what I know."),
    )
    with use_chat_model(model):
        run_id, _ = ask(acme, "How do I price?")
    assert model.bound == ["request_human_handoff"]
    assert tool_messages(model, 1)["call_1"].status == "error"
    assert [e.resource_id for e in audit_events(acme, "agent.tool_refused")] == ["search_playbook"]
    assert audit_events(acme, "agent.tool_called") == []
    assert get_run(acme, run_id).status == AgentRun.Status.AWAITING_REVIEW


def test_a_model_without_tool_calling_answers_without_tools(acme: World) -> None:
    """bind_tools of langchain's plain fake raises NotImplementedError: the graph falls back
    to the unbound model, which still gets the passages in its prompt."""
    upload_playbook(acme)
    model = FakeMessagesListChatModel(responses=[answer("Offer three packages [1].")])
    with use_chat_model(model):
        run_id, _ = ask(acme, "How many packages do I offer?")
    run = get_run(acme, run_id)
    assert run.status == AgentRun.Status.AWAITING_REVIEW
    assert run.model_name == "FakeMessagesListChatModel"
    assert draft_of(acme, run_id).body == "Offer three packages [1]."
    assert [e.kind for e in usage(acme, run_id)] == ["model"]


# --------------------------------------------------------------------------- 3. registry


def resolved(world: World) -> registry.Resolved:
    with tenant_context(world.tenant):
        return registry.resolve()


def test_the_registry_shows_plan_defaults_and_tenant_changes_take_effect_at_once(
    acme: World,
) -> None:
    owner = logged_in(acme.owner)
    shown = owner.get("/api/v1/registry/")
    assert shown.status_code == 200
    body = shown.json()
    assert body["tenant_id"] == str(acme.tenant.id)
    assert body["plan"] == "starter"
    assert set(body["tools"]) == {"search_playbook", "request_human_handoff"}
    assert body["models"] == {"offline-extractive": {"provider": "offline", "default": True}}
    assert set(body["prompts"]) == {"system"}
    assert body["data_sources"] == {"playbook": {"embedder": "hashing"}}
    assert resolved(acme).default_model == (
        "offline-extractive",
        {"provider": "offline", "default": True},
    )

    # The team and API keys read it; clients do not.
    assert logged_in(acme.consultant).get("/api/v1/registry/").status_code == 200
    assert logged_in(acme.client).get("/api/v1/registry/").status_code == 403
    with tenant_context(acme.tenant):
        key = api_keys.issue_api_key(
            acting_user=acme.owner, name="reader", scope="read", expires_at=None
        ).plaintext
    assert Client(HTTP_AUTHORIZATION=f"Bearer {key}").get("/api/v1/registry/").status_code == 200

    # A revoke through the API: the cached registry is invalidated at once.
    assert cache.get(registry.cache_key(acme.tenant.id)) is not None
    revoked = owner.post(
        ENTITLEMENTS,
        {"kind": "tool", "name": "search_playbook", "effect": "revoke"},
        content_type="application/json",
    )
    assert revoked.status_code == 201, revoked.content
    assert "search_playbook" not in resolved(acme).tools
    assert "search_playbook" not in owner.get("/api/v1/registry/").json()["tools"]

    # A grant with config, then an update of it, then deleting the revoke.
    granted = owner.post(
        ENTITLEMENTS,
        {"kind": "prompt", "name": "system", "config": {"text": "Answer like Olivia."}},
        content_type="application/json",
    )
    assert granted.status_code == 201, granted.content
    assert resolved(acme).system_prompt == "Answer like Olivia."
    patched = owner.patch(
        f"{ENTITLEMENTS}{granted.json()['id']}/",
        {"config": {"text": "Answer like Olivia, briefly."}},
        content_type="application/json",
    )
    assert patched.status_code == 200, patched.content
    assert resolved(acme).system_prompt == "Answer like Olivia, briefly."
    assert owner.delete(f"{ENTITLEMENTS}{revoked.json()['id']}/").status_code == 204
    assert "search_playbook" in resolved(acme).tools
    listed = owner.get(ENTITLEMENTS).json()["results"]
    assert [(row["kind"], row["name"], row["effect"]) for row in listed] == [
        ("prompt", "system", "grant")
    ]
    changes = audit_events(acme, "registry.changed")
    assert [e.context["effect"] for e in changes] == ["revoke", "grant", "grant", "deleted"]
    assert {e.actor_id for e in changes} == {str(acme.owner.pk)}

    # A plan change (Tenant.save) invalidates too: pro includes http_request.
    tenant = Tenant.objects.get(id=acme.tenant.id)
    tenant.plan = Tenant.Plan.PRO
    with platform_context():
        tenant.save(update_fields=["plan", "updated_at"])
    assert "http_request" in resolved(acme).tools


def test_a_change_behind_the_caches_back_shows_after_the_ttl_or_an_invalidation(
    acme: World,
) -> None:
    key = registry.cache_key(acme.tenant.id)
    rows = PlanEntitlement.objects.filter(plan="starter", kind="tool", name="request_human_handoff")
    with override_settings(REGISTRY_CACHE_SECONDS=1):
        assert resolved(acme).tools["request_human_handoff"] == {}
        assert cache.get(key) is not None
        with platform_context():
            assert rows.update(config={"note": "changed"}) == 1  # no signal, no invalidation
        assert resolved(acme).tools["request_human_handoff"] == {}  # still the cached copy
        time.sleep(1.2)
        assert cache.get(key) is None
        assert resolved(acme).tools["request_human_handoff"] == {"note": "changed"}

    # With the default TTL, only an invalidation shows the next change.
    assert resolved(acme).tools["request_human_handoff"] == {"note": "changed"}
    with platform_context():
        rows.update(config={"note": "again"})
    assert resolved(acme).tools["request_human_handoff"] == {"note": "changed"}
    registry.invalidate(acme.tenant.id)
    assert resolved(acme).tools["request_human_handoff"] == {"note": "again"}
    # Tenant rows changed behind the cache's back are no different.
    with tenant_context(acme.tenant):
        TenantEntitlement.objects.bulk_create(
            [TenantEntitlement(kind="tool", name="request_human_handoff", effect="revoke")]
        )
    assert "request_human_handoff" in resolved(acme).tools
    registry.invalidate(acme.tenant.id)
    assert "request_human_handoff" not in resolved(acme).tools


def test_consultants_read_entitlements_and_only_admins_change_them(acme: World) -> None:
    set_plan(acme.tenant, Tenant.Plan.PRO)  # http_request is a Pro tool: the plan is a ceiling
    with tenant_context(acme.tenant):
        row = TenantEntitlement.objects.create(kind="tool", name="http_request", config={})
    consultant = logged_in(acme.consultant)
    assert consultant.get(ENTITLEMENTS).status_code == 200
    assert consultant.get(f"{ENTITLEMENTS}{row.id}/").status_code == 200
    detail = f"{ENTITLEMENTS}{row.id}/"
    body = {"kind": "tool", "name": "http_request", "effect": "revoke"}
    for response in (
        consultant.post(ENTITLEMENTS, body, content_type="application/json"),
        consultant.put(detail, body, content_type="application/json"),
        consultant.patch(detail, {"effect": "revoke"}, content_type="application/json"),
        consultant.delete(detail),
    ):
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
    client = logged_in(acme.client)
    assert client.get(ENTITLEMENTS).status_code == 403
    with tenant_context(acme.tenant):
        assert TenantEntitlement.objects.get(id=row.id).effect == "grant"
    assert "http_request" in resolved(acme).tools


def test_a_second_row_for_the_same_item_is_a_400_not_a_500(acme: World) -> None:
    owner = logged_in(acme.owner)
    body = {"kind": "tool", "name": "search_playbook", "effect": "revoke"}
    first = owner.post(ENTITLEMENTS, body, content_type="application/json")
    assert first.status_code == 201
    again = owner.post(ENTITLEMENTS, body, content_type="application/json")
    assert again.status_code == 400, again.content
    assert again.json()["code"] == "invalid"
    assert "name" in again.json()["fields"]
    other = owner.post(
        ENTITLEMENTS,
        {"kind": "tool", "name": "request_human_handoff", "effect": "revoke"},
        content_type="application/json",
    )
    assert other.status_code == 201
    # Renaming a row onto another one's kind and name is refused too; editing itself is not.
    clash = owner.patch(
        f"{ENTITLEMENTS}{other.json()['id']}/",
        {"name": "search_playbook"},
        content_type="application/json",
    )
    assert clash.status_code == 400, clash.content
    same = owner.put(
        f"{ENTITLEMENTS}{first.json()['id']}/",
        {**body, "effect": "grant"},
        content_type="application/json",
    )
    assert same.status_code == 200, same.content
    with tenant_context(acme.tenant):
        assert TenantEntitlement.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "tool", "name": "delete_all_data"}, "name"),
        ({"kind": "model", "name": "x", "config": {"provider": "bogus"}}, "config"),
        (
            {"kind": "model", "name": "x", "config": {"provider": "openai", "temperature": 5}},
            "config",
        ),
        (
            {"kind": "model", "name": "x", "config": {"provider": "openai", "temperature": "hot"}},
            "config",
        ),
        ({"kind": "prompt", "name": "system", "config": {"text": "x" * 8001}}, "config"),
        ({"kind": "tool", "name": "search_playbook", "config": [1, 2]}, "config"),
        ({"kind": "spell", "name": "search_playbook"}, "kind"),
        ({"kind": "tool", "name": "search_playbook", "effect": "maybe"}, "effect"),
    ],
)
def test_invalid_entitlements_are_a_400(acme: World, body: dict[str, Any], field: str) -> None:
    response = logged_in(acme.owner).post(ENTITLEMENTS, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    assert field in response.json()["fields"]
    with tenant_context(acme.tenant):
        assert TenantEntitlement.objects.count() == 0
    assert audit_events(acme, "registry.changed") == []


@pytest.mark.parametrize("config", [True, 3, "x", ["a"]])
def test_a_config_that_is_not_an_object_is_a_400_not_a_500(acme: World, config: Any) -> None:
    # Found by tests/reliability/test_api_fuzz.py: PATCH {"config": true} was saved, then
    # answering with the row's `within_plan` failed on it (a 500).
    with tenant_context(acme.tenant):
        row = TenantEntitlement.objects.create(kind="tool", name="search_playbook", config={})
    response = logged_in(acme.owner).patch(
        f"{ENTITLEMENTS}{row.id}/", {"config": config}, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["fields"] == {"config": ["Must be a JSON object."]}
    with tenant_context(acme.tenant):
        row.refresh_from_db()
    assert row.config == {}


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_a_form_encoded_null_config_is_a_400_not_a_500(acme: World, method: str) -> None:
    # Found by tests/reliability/test_api_fuzz.py: in a form, "null" became None after DRF's
    # null check and reached the NOT NULL column (IntegrityError, a 500).
    with tenant_context(acme.tenant):
        row = TenantEntitlement.objects.create(kind="tool", name="http_request", config={})
    url = ENTITLEMENTS if method == "post" else f"{ENTITLEMENTS}{row.id}/"
    form = {"kind": "tool", "name": "search_playbook", "effect": "grant", "config": "null"}
    owner = logged_in(acme.owner)
    if method == "post":
        response = owner.post(url, form)  # multipart by default
    else:
        response = getattr(owner, method)(
            url, encode_multipart(BOUNDARY, form), content_type=MULTIPART_CONTENT
        )
    assert response.status_code == 400, response.content
    assert response.json()["fields"] == {"config": ["Must be a JSON object."]}
    with tenant_context(acme.tenant):
        assert list(TenantEntitlement.objects.values_list("name", "config")) == [
            ("http_request", {})
        ]


# --------------------------------------------------------------------------- 4. isolation


def test_tenants_with_the_same_playbook_never_see_each_others_runs(
    acme: World, globex: World
) -> None:
    acme_doc = upload_playbook(acme)
    globex_doc = upload_playbook(globex)
    question = "How should I talk about pricing with a new client?"
    run_a, _ = ask(acme, question)
    run_b, _ = ask(globex, question)

    # Each draft cites its own tenant's copy of the identical text, never the other's.
    draft_a, draft_b = draft_of(acme, run_a), draft_of(globex, run_b)
    assert {c["document"] for c in draft_a.citations} == {acme_doc}
    assert {c["document"] for c in draft_b.citations} == {globex_doc}
    assert PRICING_PASSAGE in draft_a.body

    saver = TenantCheckpointSaver()
    config: Any = {"configurable": {"thread_id": run_a}}
    with tenant_context(acme.tenant):
        mine = saver.get_tuple(config)
    assert mine is not None
    assert mine.checkpoint["channel_values"]["question"] == question
    with tenant_context(globex.tenant):
        assert saver.get_tuple(config) is None
        assert list(saver.list(config)) == []
        assert not AgentRun.objects.filter(id=run_a).exists()
        with pytest.raises(Message.DoesNotExist):
            Message.objects.get(id=draft_a.id)
        # Resuming acme's paused run from globex finds no run to resume.
        with pytest.raises(ReviewError, match="does not exist"):
            review_draft(message=draft_a, reviewer=globex.consultant, action="approve")

    # Through the API: another tenant's draft is a 404 like a missing one, for every action.
    missing = uuid.uuid4()
    for action in ("approve", "edit", "override", "reject"):
        theirs = decide(globex, str(draft_a.id), action, text="Hijacked", note="x")
        control = decide(globex, str(missing), action, text="Hijacked", note="x")
        assert theirs.status_code == control.status_code == 404
        assert theirs.content == control.content
    other = logged_in(globex.consultant)
    assert other.get(f"{QUEUE}{draft_a.id}/").status_code == 404
    assert other.get(f"/api/v1/agent-runs/{run_a}/").status_code == 404
    assert [row["id"] for row in queue(globex)] == [str(draft_b.id)]

    # Acme's run is still paused on its draft and resumes normally.
    assert get_run(acme, run_a).status == AgentRun.Status.AWAITING_REVIEW
    assert decide(acme, str(draft_a.id), "approve").status_code == 200
    assert get_run(acme, run_a).status == AgentRun.Status.COMPLETED
    with tenant_context(globex.tenant):
        assert Correction.objects.count() == 0
        assert Message.objects.get(id=draft_b.id).status == Message.Status.DRAFT


# --------------------------------------------------------------------------- 5. review


AGENDA_MD = """# Running your first board meetings

## Before the meeting

Send the board pack five working days ahead: a one-page CEO letter, the KPI dashboard, the
financials against budget, and at most three decisions you need from the board.

## The agenda

Structure the agenda around decisions, not updates. Use this order: the CEO letter and
questions, then the one or two strategic decisions, then risks and people.

## After the meeting

Write the minutes within 48 hours, list every decision and owner.
"""
CORRECTED = "Put decisions first: CEO letter, then the two strategic decisions, then risks."


def test_review_edit_reaches_the_client_and_the_agent_learns_from_it(acme: World) -> None:
    upload_playbook(acme, AGENDA_MD, "board.md")
    question = "How should I structure the agenda for a board meeting?"
    run_id, _ = ask(acme, question)

    # The draft waits in the consultant's queue...
    [item] = queue(acme)
    assert item["question"] == question
    assert item["agent_run"] == run_id
    assert item["conversation"] == str(acme.conversations[0].id)
    assert "Structure the agenda around decisions" in item["body"]
    assert item["citations"]
    consultant = logged_in(acme.consultant)
    assert consultant.get(f"{QUEUE}{item['id']}/").json()["id"] == item["id"]
    # ...and the client sees neither the draft nor its text.
    assert [m["sender"] for m in client_messages(acme)] == ["client", "client"]
    client = logged_in(acme.client)
    run_view = client.get(f"/api/v1/agent-runs/{run_id}/").json()
    assert (run_view["status"], run_view["output"], run_view["message"]) == (
        "awaiting_review",
        "",
        None,
    )
    assert consultant.get(f"/api/v1/agent-runs/{run_id}/").json()["output"] == item["body"]
    # Clients and API keys have no access to the queue.
    with tenant_context(acme.tenant):
        keys = {
            scope: api_keys.issue_api_key(
                acting_user=acme.owner, name=scope, scope=scope, expires_at=None
            ).plaintext
            for scope in ("read", "write")
        }
    for outsider in (
        client,
        Client(HTTP_AUTHORIZATION=f"Bearer {keys['read']}"),
        Client(HTTP_AUTHORIZATION=f"Bearer {keys['write']}"),
    ):
        assert outsider.get(QUEUE).status_code == 403
        assert outsider.get(f"{QUEUE}{item['id']}/").status_code == 403
        refused = outsider.post(
            f"{QUEUE}{item['id']}/approve/", {}, content_type="application/json"
        )
        assert refused.status_code == 403
    # An edit needs the text to send.
    empty = decide(acme, item["id"], "edit", text="   ")
    assert empty.status_code == 409
    assert empty.json() == {"code": "review_conflict", "message": "Write the answer to send."}
    assert get_run(acme, run_id).status == AgentRun.Status.AWAITING_REVIEW

    # The consultant edits: the client gets her version, from the agent.
    edited = decide(acme, item["id"], "edit", text=CORRECTED)
    assert edited.status_code == 200, edited.content
    assert edited.json() == {
        "id": item["id"],
        "status": "sent",
        "body": CORRECTED,
        "sender": "agent",
    }
    last = client_messages(acme)[-1]
    assert (last["id"], last["sender"], last["status"], last["body"]) == (
        item["id"],
        "agent",
        "sent",
        CORRECTED,
    )
    assert last["citations"]  # an edit keeps the draft's citations
    run_view = client.get(f"/api/v1/agent-runs/{run_id}/").json()
    assert (run_view["status"], run_view["output"], run_view["message"]) == (
        "completed",
        CORRECTED,
        item["id"],
    )
    assert queue(acme) == []
    with tenant_context(acme.tenant):
        correction = Correction.objects.get()
        message = Message.objects.get(id=item["id"])
    assert correction.kind == Correction.Kind.EDIT
    assert (correction.question, correction.final) == (question, CORRECTED)
    assert correction.draft == item["body"] == message.original_draft
    assert correction.created_by_id == acme.consultant.pk
    assert message.reviewed_by_id == acme.consultant.pk and message.reviewed_at is not None
    [event] = audit_events(acme, "review.edited")
    assert (event.actor_id, event.resource_id, event.agent_run_id) == (
        str(acme.consultant.pk),
        item["id"],
        run_id,
    )

    # Deciding again is a conflict, and changes nothing.
    again = decide(acme, item["id"], "approve")
    assert again.status_code == 409, again.content
    assert again.json()["code"] == "review_conflict"

    # A paraphrase later: the agent answers the way the consultant did.
    later_id, _ = ask(acme, "How do I structure the agenda of my board meeting?")
    later = draft_of(acme, later_id)
    assert "Your consultant answered a very similar question before" in later.body
    assert CORRECTED in later.body
    # An unrelated question does not get her board answer.
    unrelated_id, _ = ask(acme, "When do I send the minutes?")
    assert CORRECTED not in draft_of(acme, unrelated_id).body


def test_approve_override_and_reject(acme: World, globex: World) -> None:
    upload_playbook(acme)
    approve_run, _ = ask(acme, "How many packages should I offer?")
    override_run, _ = ask(acme, "Can I quote a price on the first call?")
    reject_run, _ = ask(acme, "What goes in the summary?")
    drafts = {
        name: draft_of(acme, run_id)
        for name, run_id in (
            ("approve", approve_run),
            ("override", override_run),
            ("reject", reject_run),
        )
    }
    assert [row["id"] for row in queue(acme)] == [
        str(drafts[name].id) for name in ("reject", "override", "approve")
    ]  # newest first

    # Approve: the draft goes out as it is.
    approved = decide(acme, str(drafts["approve"].id), "approve")
    assert approved.status_code == 200
    assert approved.json()["body"] == drafts["approve"].body
    assert approved.json()["sender"] == "agent"

    # Override: her own words, from her, without the agent's citations.
    own = "No. Ask about their goals first; the price comes in the proposal."
    overridden = decide(acme, str(drafts["override"].id), "override", text=own)
    assert overridden.status_code == 200
    assert overridden.json() == {
        "id": str(drafts["override"].id),
        "status": "sent",
        "body": own,
        "sender": "consultant",
    }

    # Reject: nothing is sent.
    rejected = decide(acme, str(drafts["reject"].id), "reject", note="Too vague, I'll call her.")
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"

    sent = {m["id"]: m for m in client_messages(acme) if m["sender"] != "client"}
    assert set(sent) == {str(drafts["approve"].id), str(drafts["override"].id)}
    assert sent[str(drafts["override"].id)]["author"] == acme.consultant.pk
    assert sent[str(drafts["override"].id)]["citations"] == []
    assert sent[str(drafts["approve"].id)]["citations"] == drafts["approve"].citations
    with tenant_context(acme.tenant):
        rejected_message = Message.objects.get(id=drafts["reject"].id)
        [correction] = Correction.objects.all()
    assert rejected_message.status == Message.Status.REJECTED
    assert rejected_message.review_note == "Too vague, I'll call her."
    assert (correction.kind, correction.final, correction.draft) == (
        Correction.Kind.OVERRIDE,
        own,
        drafts["override"].body,
    )
    for run_id in (approve_run, override_run, reject_run):
        assert get_run(acme, run_id).status == AgentRun.Status.COMPLETED
    client_view = logged_in(acme.client).get(f"/api/v1/agent-runs/{reject_run}/").json()
    assert (client_view["status"], client_view["output"]) == ("completed", "")
    [event] = audit_events(acme, "review.rejected")
    assert event.context == {"note": "Too vague, I'll call her."}
    assert [e.resource_id for e in audit_events(acme, "review.approved")] == [
        str(drafts["approve"].id)
    ]
    assert [e.resource_id for e in audit_events(acme, "review.overridden")] == [
        str(drafts["override"].id)
    ]

    # Every draft was decided once; a second decision of any kind is a conflict.
    for name, draft in drafts.items():
        for action in ("approve", "reject"):
            again = decide(acme, str(draft.id), action, note="again")
            assert again.status_code == 409, (name, action)
            assert again.json()["code"] == "review_conflict"
    # Another tenant's consultant cannot decide acme's drafts.
    pending_run, _ = ask(acme, "Who anchors the price?")
    pending = draft_of(acme, pending_run)
    assert decide(globex, str(pending.id), "approve").status_code == 404
    assert get_run(acme, pending_run).status == AgentRun.Status.AWAITING_REVIEW


def test_two_decisions_at_once_send_one_answer(
    acme: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draft's row is locked while a decision is applied: a second consultant deciding
    at the same moment waits, then gets a conflict (not a second, different answer)."""
    upload_playbook(acme)
    run_id, _ = ask(acme, "How many packages should I offer?")
    draft = draft_of(acme, run_id)
    apply_review = runs.apply_review

    def slow_apply_review(run: AgentRun, decision: dict[str, Any]) -> Message:
        message = apply_review(run, decision)
        time.sleep(1.0)  # the first decision's transaction stays open
        return message

    monkeypatch.setattr(runs, "apply_review", slow_apply_review)
    results: dict[str, int] = {}

    def decide_in_thread(action: str, delay: float) -> None:
        time.sleep(delay)
        try:
            results[action] = decide(acme, str(draft.id), action, text="A late edit").status_code
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=decide_in_thread, args=("approve", 0.0)),
        threading.Thread(target=decide_in_thread, args=("edit", 0.4)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"approve": 200, "edit": 409}
    with tenant_context(acme.tenant):
        message = Message.objects.get(id=draft.id)
        assert Correction.objects.count() == 0
    assert (message.status, message.body) == (Message.Status.SENT, draft.body)
    assert len(audit_events(acme, "review.approved")) == 1
    assert audit_events(acme, "review.edited") == []


# --------------------------------------------------------------------------- 6. policy


def test_auto_send_answers_directly_unless_the_model_hands_off(acme: World) -> None:
    set_policy(acme, "auto_send")
    upload_playbook(acme)
    run_id, _ = ask(acme, "How many packages should I offer?")
    run = get_run(acme, run_id)
    assert run.status == AgentRun.Status.COMPLETED
    assert run.finished_at is not None
    message = draft_of(acme, run_id)
    assert message.status == Message.Status.SENT
    assert queue(acme) == []
    last = client_messages(acme)[-1]
    assert (last["id"], last["sender"], last["status"]) == (str(message.id), "agent", "sent")
    view = logged_in(acme.client).get(f"/api/v1/agent-runs/{run_id}/").json()
    assert (view["status"], view["output"]) == ("completed", message.body)
    [sent] = audit_events(acme, "agent.answer_sent")
    assert sent.resource_id == str(message.id)
    assert audit_events(acme, "agent.draft_created") == []
    # Nothing is waiting: the run is not paused.
    with tenant_context(acme.tenant):
        state = TenantCheckpointSaver().get_tuple({"configurable": {"thread_id": run_id}})
    assert state is not None
    assert not any(w[1] == "__interrupt__" for w in state.pending_writes or [])

    # A handoff always reaches the consultant.
    model = scripted(
        calls(tool_call("request_human_handoff", "call_1", reason="Wants a custom contract")),
        answer("I've asked your consultant to take this one."),
    )
    with use_chat_model(model):
        handoff_id, _ = ask(acme, "Can you draft a custom contract for me?")
    assert get_run(acme, handoff_id).status == AgentRun.Status.AWAITING_REVIEW
    handoff = draft_of(acme, handoff_id)
    assert handoff.status == Message.Status.DRAFT
    assert [row["id"] for row in queue(acme)] == [str(handoff.id)]
    assert handoff.body not in [m["body"] for m in client_messages(acme)]
    [drafted] = audit_events(acme, "agent.draft_created")
    assert drafted.context["handoff"] == "Wants a custom contract"
    assert tool_messages(model, 1)["call_1"].content == (
        "Your consultant has been asked to take over this conversation."
    )


def test_flagged_reviews_only_low_confidence_answers(acme: World) -> None:
    set_policy(acme, "flagged")
    # No playbook yet: the offline responder has nothing to go on (low confidence).
    unsure_id, _ = ask(acme, "How many packages should I offer?")
    unsure = draft_of(acme, unsure_id)
    assert "I found nothing in the playbook about this" in unsure.body
    assert unsure.status == Message.Status.DRAFT
    assert get_run(acme, unsure_id).status == AgentRun.Status.AWAITING_REVIEW
    assert [row["id"] for row in queue(acme)] == [str(unsure.id)]
    assert audit_events(acme, "agent.draft_created")[0].context["confidence"] == "low"

    # With the playbook, a confident answer goes straight out.
    upload_playbook(acme)
    sure_id, _ = ask(acme, "How many packages should I offer?")
    sure = draft_of(acme, sure_id)
    assert sure.status == Message.Status.SENT
    assert get_run(acme, sure_id).status == AgentRun.Status.COMPLETED
    assert "Offer three packages" in sure.body
    assert [row["id"] for row in queue(acme)] == [str(unsure.id)]
    assert audit_events(acme, "agent.answer_sent")[0].context["confidence"] in ("medium", "high")
    assert [m["id"] for m in client_messages(acme) if m["sender"] == "agent"] == [str(sure.id)]

    # Passages exist but do not speak to the question: the consultant looks first.
    off_topic_id, _ = ask(acme, "Can you recommend a divorce lawyer in Leeds?")
    off_topic = draft_of(acme, off_topic_id)
    assert off_topic.status == Message.Status.DRAFT
    assert str(off_topic.id) in [row["id"] for row in queue(acme)]


# --------------------------------------------------------------------------- 7. http_request


@dataclass
class Endpoint:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A tiny HTTP service on 127.0.0.1 that records what it is sent."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "json": json.loads(self.rfile.read(length) or b"null"),
                    "headers": dict(self.headers),
                }
            )
            body = json.dumps({"status": "Order 42 ships on Monday."}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}/lookup", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_request_calls_the_endpoint_the_tenant_configured(
    acme: World, endpoint: Endpoint
) -> None:
    set_plan(acme.tenant, Tenant.Plan.PRO)  # http_request is a Pro tool: the plan is a ceiling
    # The stand-in listens on the loopback: the operator's allow-list lets the admin save it
    # and the tool call it.
    with override_settings(OUTBOUND_ALLOWED_NETWORKS=["127.0.0.1"]):
        granted = logged_in(acme.owner).post(
            ENTITLEMENTS,
            {
                "kind": "tool",
                "name": "http_request",
                "config": {"url": endpoint.url, "method": "POST"},
            },
            content_type="application/json",
        )
    assert granted.status_code == 201, granted.content
    assert resolved(acme).tools["http_request"] == {"url": endpoint.url, "method": "POST"}

    model = scripted(
        calls(tool_call("http_request", "call_1", query="status of order 42")),
        answer("Your order ships on Monday."),
    )
    with override_settings(OUTBOUND_ALLOWED_NETWORKS=["127.0.0.1"]), use_chat_model(model):
        run_id, _ = ask(acme, "When does my order 42 ship?")
    assert "http_request" in model.bound
    [request] = endpoint.received
    assert (request["method"], request["path"]) == ("POST", "/lookup")
    assert request["json"] == {"query": "status of order 42"}
    assert "Authorization" not in request["headers"]  # no credential configured
    result = tool_messages(model, 1)["call_1"]
    assert result.status == "success"
    assert json.loads(str(result.content)) == {"status": "Order 42 ships on Monday."}
    assert draft_of(acme, run_id).body == "Your order ships on Monday."
    assert [e.tool for e in usage(acme, run_id) if e.kind == "tool"] == ["http_request"]
    [called] = audit_events(acme, "agent.tool_called")
    assert (called.resource_id, called.context) == ("http_request", {"status": "success"})

    # Without the operator's allow-list, a private address is refused before any request
    # (the call checks again: the address was allowed when it was saved).
    model = scripted(
        calls(tool_call("http_request", "call_2", query="status of order 43")),
        answer("I could not check that."),
    )
    with use_chat_model(model):
        refused_id, _ = ask(acme, "When does my order 43 ship?")
    assert len(endpoint.received) == 1
    result = tool_messages(model, 1)["call_2"]
    assert result.status == "error"
    assert result.content == (
        "Error: 127.0.0.1 is not a public address (loopback). Playbook does not call private "
        "networks unless the platform operator allows it."
    )
    assert get_run(acme, refused_id).status == AgentRun.Status.AWAITING_REVIEW
    assert [e.context["status"] for e in audit_events(acme, "agent.tool_called")] == [
        "success",
        "error",
    ]


# --------------------------------------------------------------------------- 8. failures


def test_a_failing_model_fails_the_run_without_a_draft(acme: World) -> None:
    upload_playbook(acme)
    model = BrokenModel(responses=[answer("never")])
    with use_chat_model(model):
        run_id, trigger_id = ask(acme, "How many packages should I offer?")
    assert len(model.seen) == 1
    run = get_run(acme, run_id)
    assert run.status == AgentRun.Status.FAILED
    assert run.error == "ConnectionError"
    assert run.finished_at is not None
    assert run.draft_message is None
    with tenant_context(acme.tenant):
        assert not Message.objects.filter(sender=Message.Sender.AGENT).exists()
        assert Message.objects.get(id=trigger_id).status == Message.Status.SENT
    assert queue(acme) == []
    assert usage(acme, run_id) == []
    [failed] = audit_events(acme, "agent.run_failed")
    assert (failed.resource_id, failed.agent_run_id) == (run_id, run_id)
    assert failed.context == {"error": "ConnectionError"}
    assert audit_events(acme, "agent.draft_created") == []
    view = logged_in(acme.client).get(f"/api/v1/agent-runs/{run_id}/").json()
    assert (view["status"], view["output"], view["message"]) == ("failed", "", None)
    assert logged_in(acme.client).get("/api/v1/agent-runs/").json()["count"] == 1
