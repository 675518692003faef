"""The plan is a ceiling: a tenant's own grants narrow or configure what its plan allows, and
only platform staff go past it -- in the support admin, with a reason, in the tenant's audit
log. Checked where a grant is written (API 403 `not_in_plan`, a form error on the Tools &
models page) and again at every agent run, so a downgraded plan binds from the next run.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError
from django.test import Client, override_settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from agents import registry
from agents.entitlements import grant_override
from agents.llm import use_chat_model
from agents.models import AgentRun, EntitlementOverride, TenantEntitlement
from audit.models import AuditEvent
from tenants.context import platform_context, tenant_context
from tenants.models import Tenant
from tests.factories import UserFactory, World, build_world, set_plan
from tests.test_agents import (
    ENTITLEMENTS,
    answer,
    ask,
    audit_events,
    calls,
    eager,  # noqa: F401  (fixture)
    get_run,
    logged_in,
    plan_defaults,  # noqa: F401  (fixture)
    scripted,
    stack,  # noqa: F401  (fixture: committed data, eager Celery, plan defaults)
    tool_call,
    tool_messages,
)
from tests.test_support_admin import otp_login
from tests.web import text, with_admin

OVERRIDES = "/admin/agents/entitlementoverride/"
REASON = "Ticket 88: three-month trial of the CRM lookup agreed with sales"


@pytest.fixture
def acme(stack: None) -> World:  # noqa: F811
    return build_world("acme")


@pytest.fixture
def globex(stack: None) -> World:  # noqa: F811
    return build_world("globex")


@pytest.fixture
def staff(stack: None) -> User:  # noqa: F811
    return UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)


@pytest.fixture
def admin_site(staff: User) -> Client:
    """Sam, signed in to the support admin with his second factor."""
    with platform_context():
        device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client, response = otp_login(staff, device)
    assert response.status_code == 302, response.content
    return client


def own_rows(world: World) -> list[tuple[str, str, str]]:
    with tenant_context(world.tenant):
        return [(r.kind, r.name, r.effect) for r in TenantEntitlement.objects.all()]


def resolved(world: World) -> registry.Resolved:
    with tenant_context(world.tenant):
        return registry.resolve()



@pytest.fixture(autouse=True)
def loopback_allowed() -> Any:
    """The tool endpoints here are on the loopback: the operator's allow-list admits them
    (tenants.outbound), so what these tests see is the plan's ceiling alone."""
    with override_settings(OUTBOUND_ALLOWED_NETWORKS=["127.0.0.1"]):
        yield


def grant_http(world: World, url: str = "http://127.0.0.1:9009/lookup") -> Any:
    return logged_in(world.owner).post(
        ENTITLEMENTS,
        {"kind": "tool", "name": "http_request", "config": {"url": url, "method": "POST"}},
        content_type="application/json",
    )


def http_run(world: World, question: str) -> tuple[AgentRun, list[str], Any]:
    """A run whose model asks for http_request: what was bound, and what the tool answered."""
    model = scripted(
        calls(tool_call("http_request", "call_1", query="order 42")),
        answer("Your order ships on Monday."),
    )
    with use_chat_model(model):
        run_id, _ = ask(world, question)
    return get_run(world, run_id), model.bound, tool_messages(model, 1)["call_1"]


# --------------------------------------------------------------------------- the API


def test_a_grant_beyond_the_plan_is_a_403_that_names_the_plan(acme: World) -> None:
    refused = grant_http(acme)
    assert refused.status_code == 403, refused.content
    assert refused.json() == {
        "code": "not_in_plan",
        "message": "The http_request tool is not in the Starter plan. Change to a plan that "
        "includes it, or ask Playbook support for an exception.",
        "plan": "starter",
    }
    # A model beyond the plan: a provider the plan lacks, or a model id it does not name.
    for config, says in (
        ({"provider": "openai", "model": "gpt-4o"}, "The OpenAI model gpt-4o"),
        ({"provider": "anthropic"}, "The Anthropic model sonnet"),
        ({"provider": "openai_compatible", "model": "llama3"}, "OpenAI-compatible model llama3"),
    ):
        response = logged_in(acme.owner).post(
            ENTITLEMENTS,
            {"kind": "model", "name": "sonnet", "config": config},
            content_type="application/json",
        )
        assert response.status_code == 403, response.content
        assert response.json()["code"] == "not_in_plan"
        assert response.json()["plan"] == "starter"
        assert says in response.json()["message"]
    # Nothing was written or audited, and the agent has none of it.
    assert own_rows(acme) == []
    assert audit_events(acme, "registry.changed") == []
    assert "http_request" not in resolved(acme).tools
    assert set(resolved(acme).models) == {"offline-extractive"}

    # Configuring a plan model past the plan (Pro has gpt-4o-mini, not gpt-4o) is refused too,
    # through every method; the row keeps what it had.
    set_plan(acme.tenant, Tenant.Plan.PRO)
    owner = logged_in(acme.owner)
    mini = {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.5}
    created = owner.post(
        ENTITLEMENTS,
        {"kind": "model", "name": "gpt-4o-mini", "config": mini},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    row = f"{ENTITLEMENTS}{created.json()['id']}/"
    bigger = {"provider": "openai", "model": "gpt-4o"}
    for response in (
        owner.patch(row, {"config": bigger}, content_type="application/json"),
        owner.put(
            row,
            {"kind": "model", "name": "gpt-4o-mini", "config": bigger},
            content_type="application/json",
        ),
    ):
        assert response.status_code == 403, response.content
        assert response.json()["plan"] == "pro"
        assert "The OpenAI model gpt-4o is not in the Pro plan." in response.json()["message"]
    assert resolved(acme).models["gpt-4o-mini"]["temperature"] == 0.5


def test_grants_within_the_plan_still_narrow_and_configure(acme: World) -> None:
    owner = logged_in(acme.owner)
    # Starter: configure a plan tool, add an offline model, revoke even what is not in it.
    created = {}
    for body in (
        {"kind": "tool", "name": "request_human_handoff", "config": {"note": "weekdays"}},
        {"kind": "model", "name": "house", "config": {"provider": "offline", "temperature": 0.7}},
        {"kind": "tool", "name": "http_request", "effect": "revoke"},
        {"kind": "prompt", "name": "system", "config": {"text": "Answer like Olivia."}},
    ):
        response = owner.post(ENTITLEMENTS, body, content_type="application/json")
        assert response.status_code == 201, response.content
        assert response.json()["within_plan"] is True
        created[body["name"]] = f"{ENTITLEMENTS}{response.json()['id']}/"
    assert resolved(acme).tools["request_human_handoff"] == {"note": "weekdays"}
    assert resolved(acme).models["house"] == {"provider": "offline", "temperature": 0.7}
    assert resolved(acme).system_prompt == "Answer like Olivia."
    # Turning the revoke into a grant is reaching past the plan: refused.
    grant = {"effect": "grant", "config": {"url": "http://127.0.0.1:9009/lookup"}}
    refused = owner.patch(created["http_request"], grant, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["code"] == "not_in_plan"

    # Pro includes http_request: the same change is allowed, and the run binds the tool.
    set_plan(acme.tenant, Tenant.Plan.PRO)
    allowed = owner.patch(created["http_request"], grant, content_type="application/json")
    assert allowed.status_code == 200, allowed.content
    assert allowed.json()["within_plan"] is True
    assert resolved(acme).tools["http_request"]["url"] == "http://127.0.0.1:9009/lookup"
    run, bound, result = http_run(acme, "When does order 42 ship?")
    assert "http_request" in bound
    # Executed (not refused by the plan): it called the endpoint, where nothing listens.
    assert result.content == "Error: the endpoint did not answer (ConnectError)"
    assert run.status == AgentRun.Status.AWAITING_REVIEW


# --------------------------------------------------------------------------- the pages


def test_the_tools_page_says_what_the_plan_lacks_and_refuses_it_as_a_form_error(
    acme: World,
) -> None:
    ada = logged_in(with_admin(acme))
    page = text(ada.get("/app/tools/"))
    assert "Not in the Starter plan." in page
    assert 'name="url"' not in page  # no form to turn http_request on

    refused = ada.post(
        "/app/tools/tool",
        {"name": "http_request", "enabled": "1", "url": "https://crm.example.com/api/search"},
    )
    assert refused.status_code == 403
    body = text(refused)
    assert (
        '<p class="error" role="alert">The http_request tool is not in the Starter plan. '
        "Change to a plan that includes it, or ask Playbook support for an exception.</p>"
    ) in body
    assert "<h1>Tools &amp; models</h1>" in body  # the page itself, with the error in place

    model = ada.post(
        "/app/tools/model",
        {"name": "big", "provider": "openai", "model": "gpt-4o", "temperature": "0.2"},
    )
    assert model.status_code == 403
    assert "The OpenAI model gpt-4o is not in the Starter plan." in text(model)
    assert '<details class="card" id="model" style="margin-top: 1rem" open>' in text(model)
    assert own_rows(acme) == []
    assert audit_events(acme, "registry.changed") == []

    # Within the plan the same page still saves.
    added = ada.post("/app/tools/model", {"name": "house", "provider": "offline"})
    assert added.status_code == 302
    assert own_rows(acme) == [("model", "house", "grant")]


# --------------------------------------------------------------------------- overrides


def test_an_operator_override_with_a_reason_is_audited_and_lets_the_grant_work(
    acme: World, admin_site: Client, staff: User
) -> None:
    form = {"tenant": str(acme.tenant.id), "kind": "tool", "name": "http_request"}
    # A reason is required; an unknown tool is refused.
    for bad, field_error in (
        ({**form, "reason": "trial"}, "Ensure this value has at least 10 characters"),
        ({**form, "name": "shell", "reason": REASON}, "Unknown tool."),
    ):
        response = admin_site.post(f"{OVERRIDES}add/", bad)
        assert response.status_code == 200
        assert field_error in text(response)
    with platform_context():
        assert not EntitlementOverride.objects.exists()

    added = admin_site.post(f"{OVERRIDES}add/", {**form, "reason": REASON})
    assert added.status_code == 302, text(added)
    listing = text(admin_site.get(OVERRIDES))
    assert REASON in listing and "sam@platform.test" in listing

    # In the tenant's own log, as the staff member, with the reason.
    [event] = audit_events(acme, "registry.override_granted")
    assert event.actor_type == AuditEvent.ActorType.SUPPORT  # platform staff
    assert event.actor_label == "sam@platform.test"
    assert event.context == {
        "kind": "tool",
        "name": "http_request",
        "reason": REASON,
        "plan": "starter",
    }
    # The tenant's admins see what the override allows, and its reason.
    with tenant_context(acme.tenant):
        [mine] = EntitlementOverride.objects.all()
        assert (mine.name, mine.reason) == ("http_request", REASON)

    # The starter tenant's grant now works, and the run binds the tool.
    assert grant_http(acme).status_code == 201
    _, bound, _ = http_run(acme, "When does order 42 ship?")
    assert "http_request" in bound
    page = text(logged_in(with_admin(acme)).get("/app/tools/"))
    assert "an exception to your plan, made by Playbook support" in page

    # Removed (with a reason): the grant stays, inert, and the next run lacks the tool.
    override_id = mine.pk
    short = admin_site.post(f"{OVERRIDES}{override_id}/remove/", {"reason": "done"})
    assert short.status_code == 200
    removed = admin_site.post(
        f"{OVERRIDES}{override_id}/remove/", {"reason": "Ticket 88: the trial ended"}
    )
    assert removed.status_code == 302
    [gone] = audit_events(acme, "registry.override_removed")
    assert gone.context["reason"] == "Ticket 88: the trial ended"
    assert gone.actor_label == "sam@platform.test"
    _, bound, result = http_run(acme, "And order 43?")
    assert "http_request" not in bound
    assert (
        str(result.content)
        == "Refused: the tool 'http_request' is not available to this assistant."
    )
    assert own_rows(acme) == [("tool", "http_request", "grant")]
    listed = logged_in(acme.owner).get(ENTITLEMENTS).json()["results"]
    assert [(r["name"], r["within_plan"]) for r in listed] == [("http_request", False)]


def test_only_the_platform_writes_overrides_and_a_tenant_reads_only_its_own(
    acme: World, globex: World, staff: User
) -> None:
    grant_override(
        staff=staff, tenant=globex.tenant, kind="tool", name="http_request", reason=REASON
    )
    # The tenant (its owner, or any SQL run in its context) cannot give itself one.
    with tenant_context(acme.tenant, user_id=acme.owner.pk):
        assert not EntitlementOverride.objects.exists()  # globex's is invisible
        with pytest.raises(ProgrammingError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO public.agents_entitlementoverride (id, tenant_id, kind, name, "
                "config, reason, granted_by, created_at) VALUES (gen_random_uuid(), %s, "
                "'tool', 'http_request', '{}', 'self-service', 'me', now())",
                [acme.tenant.id],
            )
    with tenant_context(globex.tenant, user_id=globex.owner.pk), connection.cursor() as cursor:
        assert EntitlementOverride.objects.count() == 1
        cursor.execute("UPDATE public.agents_entitlementoverride SET name = 'x' RETURNING id")
        assert cursor.fetchall() == []
        cursor.execute("DELETE FROM public.agents_entitlementoverride RETURNING id")
        assert cursor.fetchall() == []
    with platform_context():
        assert EntitlementOverride.objects.count() == 1
    assert grant_http(acme).status_code == 403
    assert grant_http(globex).status_code == 201


# --------------------------------------------------------------------------- run time


def test_a_downgrade_stops_what_is_beyond_the_new_plan_at_the_next_run(acme: World) -> None:
    set_plan(acme.tenant, Tenant.Plan.PRO)
    assert grant_http(acme).status_code == 201
    run, bound, _ = http_run(acme, "When does order 42 ship?")
    assert "http_request" in bound
    assert resolved(acme).tools["http_request"]  # cached for REGISTRY_CACHE_SECONDS

    # Downgraded behind the cache's back (no signal, no invalidation): the run reads the plan
    # as it is now, whatever the cache holds.
    with platform_context():
        assert Tenant.objects.filter(id=acme.tenant.id).update(plan=Tenant.Plan.STARTER) == 1
    run, bound, result = http_run(acme, "And order 43?")
    assert "http_request" not in bound
    assert result.status == "error"
    assert "not available to this assistant" in str(result.content)
    [refused] = audit_events(acme, "agent.tool_refused")
    assert (refused.resource_id, refused.agent_run_id) == ("http_request", str(run.id))
    # The grant is kept (an upgrade brings it back) and shown as beyond the plan.
    assert own_rows(acme) == [("tool", "http_request", "grant")]
    [row] = logged_in(acme.owner).get(ENTITLEMENTS).json()["results"]
    assert row["within_plan"] is False
    assert "http_request" not in logged_in(acme.owner).get("/api/v1/registry/").json()["tools"]


def test_a_grant_from_before_the_ceiling_gives_the_agent_nothing(acme: World) -> None:
    # Rows written before this change (the API allowed them) stay, inert.
    with tenant_context(acme.tenant):
        TenantEntitlement.objects.create(kind="tool", name="http_request", config={"url": "x"})
        TenantEntitlement.objects.create(
            kind="model",
            name="gpt-4o",
            config={"provider": "openai", "model": "gpt-4o", "default": True},
        )
    assert "http_request" not in resolved(acme).tools
    assert set(resolved(acme).models) == {"offline-extractive"}
    _, bound, result = http_run(acme, "When does order 42 ship?")
    assert "http_request" not in bound
    assert "not available to this assistant" in str(result.content)
    listed = logged_in(acme.owner).get(ENTITLEMENTS).json()["results"]
    assert {(r["name"], r["within_plan"]) for r in listed} == {
        ("http_request", False),
        ("gpt-4o", False),
    }
