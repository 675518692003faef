"""The usage report (`GET /api/v1/usage/`) and page (`/app/usage/`): sums computed by
PostgreSQL match hand-computed ones, another tenant's usage never appears, only owners and
admins see it, and the page shows the same numbers as the API, with an SVG chart and the caps.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts import api_keys
from accounts.models import Membership, User
from agents.models import AgentRun
from billing.api import current_period_range
from billing.models import PlanLimit, UsageEvent
from tenants.context import platform_context, tenant_context
from tests.factories import UserFactory, World, build_world

pytestmark = pytest.mark.django_db

SOFT_CAP, HARD_CAP = 20_000_000, 25_000_000  # the starter plan's, in micro-dollars


def session_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def plan_limits() -> None:
    # Platform rows shipped by a migration; a `live_db` test elsewhere may have truncated them.
    with platform_context():
        PlanLimit.objects.update_or_create(
            plan="starter",
            defaults={"soft_cap_microdollars": SOFT_CAP, "hard_cap_microdollars": HARD_CAP},
        )
        PlanLimit.objects.update_or_create(
            plan="enterprise", defaults={"soft_cap_microdollars": 0, "hard_cap_microdollars": 0}
        )


@dataclass
class Usage:
    world: World
    admin: User
    runs: dict[str, AgentRun]
    first_day: date  # of this month (UTC)


def first_of_month() -> date:
    return current_period_range()[0]


def at(day: date, hour: int = 10, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=UTC)


def record(
    *,
    when: datetime,
    cost: int,
    model: str = "",
    tool: str = "",
    user: User | None = None,
    run: AgentRun | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> UsageEvent:
    """One usage event of the current tenant, dated `when` (auto_now_add, then update())."""
    event = UsageEvent.objects.create(
        idempotency_key=uuid.uuid4().hex,
        kind=UsageEvent.Kind.TOOL if tool else UsageEvent.Kind.MODEL,
        model=model,
        tool=tool,
        user=user,
        agent_run=run,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_microdollars=cost,
    )
    UsageEvent.objects.filter(id=event.id).update(created_at=when)
    return event


def make_run(world: World, requested_by: User, index: int) -> AgentRun:
    conversation = world.conversations[index]
    return AgentRun.objects.create(
        conversation=conversation,
        trigger_message=conversation.messages.first(),
        requested_by=requested_by,
        status=AgentRun.Status.COMPLETED,
    )


def with_admin(world: World) -> User:
    admin = UserFactory.create(
        username=f"ada@{world.tenant.slug}.test",
        tenant=world.tenant,
        first_name="Ada",
        last_name="Admin",
    )
    with tenant_context(world.tenant):
        Membership.objects.create(user=admin, role=Membership.Role.ADMIN)
    return admin


@pytest.fixture
def acme() -> Usage:
    """Five events this month over three days (one at 23:59:59.999 UTC), one last month."""
    world = build_world("acme")
    admin = with_admin(world)
    d0 = first_of_month()
    d1, d2 = d0 + timedelta(days=1), d0 + timedelta(days=2)
    last_month = d0 - timedelta(days=1)
    with tenant_context(world.tenant):
        cleo, cody = world.client, world.other_client
        run1, run2 = make_run(world, cleo, 0), make_run(world, cody, 1)
        record(
            when=at(d0, 9),
            model="gpt-4o",
            user=cleo,
            run=run1,
            cost=4_500,
            input_tokens=1_000,
            output_tokens=200,
        )
        record(
            when=at(d0, 17),
            model="gpt-4o",
            user=cleo,
            run=run1,
            cost=2_250,
            input_tokens=500,
            output_tokens=100,
        )
        record(when=at(d1, 0), tool="http_request", user=cleo, run=run1, cost=1_000)
        record(
            when=at(d1, 12),
            model="gpt-4o-mini",
            user=cody,
            run=run2,
            cost=480,
            input_tokens=2_000,
            output_tokens=300,
        )
        record(
            when=at(d2, 23, 59, 59, 999_999),
            model="gpt-4o-mini",
            user=cody,
            run=run2,
            cost=45,
            input_tokens=100,
            output_tokens=50,
        )
        record(
            when=at(last_month, 23, 59, 59),
            model="gpt-4o",
            user=cleo,
            run=run1,
            cost=99_999,
            input_tokens=9,
            output_tokens=9,
        )
    return Usage(world, admin, {"run1": run1, "run2": run2}, d0)


@pytest.fixture
def globex() -> Usage:
    world = build_world("globex")
    admin = with_admin(world)
    with tenant_context(world.tenant):
        run = make_run(world, world.client, 0)
        record(
            when=at(first_of_month(), 11),
            model="globex-secret-model",
            user=world.client,
            run=run,
            cost=7_777_777,
            input_tokens=123_456,
            output_tokens=654_321,
        )
    return Usage(world, admin, {"run1": run}, first_of_month())


def usage(user: User, **params: str) -> Any:
    response = session_client(user).get("/api/v1/usage/", params)
    assert response.status_code == 200, response.content
    return response.json()


def days_in_month(first: date) -> int:
    return ((first + timedelta(days=32)).replace(day=1) - first).days


# --------------------------------------------------------------------------- the numbers


def test_the_report_sums_this_months_events_by_day_model_user_and_run(
    acme: Usage, globex: Usage
) -> None:
    report = usage(acme.world.owner)  # default: this month
    d0 = acme.first_day
    month = days_in_month(d0)
    last = d0 + timedelta(days=month - 1)
    assert report["period"] == {"from": d0.isoformat(), "to": last.isoformat(), "is_current": True}
    assert report["tenant_id"] == str(acme.world.tenant.id)

    # 4500 + 2250 + 1000 + 480 + 45; last month's 99,999 is not in it.
    assert report["totals"] == {
        "cost_microdollars": 8_275,
        "cost_dollars": "0.008275",
        "input_tokens": 3_600,
        "output_tokens": 650,
        "calls": 5,
    }

    by_day = report["by_day"]
    assert [row["date"] for row in by_day] == [
        (d0 + timedelta(days=n)).isoformat() for n in range(month)
    ]
    busy = {row["date"]: row for row in by_day if row["calls"]}
    assert busy == {
        d0.isoformat(): {
            "date": d0.isoformat(),
            "cost_microdollars": 6_750,
            "cost_dollars": "0.006750",
            "input_tokens": 1_500,
            "output_tokens": 300,
            "calls": 2,
        },
        (d0 + timedelta(days=1)).isoformat(): {
            "date": (d0 + timedelta(days=1)).isoformat(),
            "cost_microdollars": 1_480,
            "cost_dollars": "0.001480",
            "input_tokens": 2_000,
            "output_tokens": 300,
            "calls": 2,
        },
        (d0 + timedelta(days=2)).isoformat(): {
            "date": (d0 + timedelta(days=2)).isoformat(),
            "cost_microdollars": 45,
            "cost_dollars": "0.000045",
            "input_tokens": 100,
            "output_tokens": 50,
            "calls": 1,
        },
    }
    assert sum(row["cost_microdollars"] for row in by_day) == report["totals"]["cost_microdollars"]

    assert [
        (
            m["name"],
            m["kind"],
            m["calls"],
            m["cost_microdollars"],
            m["input_tokens"],
            m["output_tokens"],
        )
        for m in report["by_model"]
    ] == [
        ("gpt-4o", "model", 2, 6_750, 1_500, 300),
        ("tool:http_request", "tool", 1, 1_000, 0, 0),
        ("gpt-4o-mini", "model", 2, 525, 2_100, 350),
    ]
    assert [
        (u["user_id"], u["name"], u["calls"], u["cost_microdollars"]) for u in report["top_users"]
    ] == [
        (acme.world.client.id, "Cleo", 3, 7_750),
        (acme.world.other_client.id, "Cody", 2, 525),
    ]
    assert [
        (r["agent_run_id"], r["calls"], r["cost_microdollars"]) for r in report["top_runs"]
    ] == [
        (str(acme.runs["run1"].id), 3, 7_750),
        (str(acme.runs["run2"].id), 2, 525),
    ]

    caps = report["caps"]
    assert caps["plan"] == "starter"
    assert caps["period"] == f"{d0:%Y-%m}"
    assert (caps["soft_microdollars"], caps["soft_dollars"]) == (SOFT_CAP, "20.000000")
    assert (caps["hard_microdollars"], caps["hard_dollars"]) == (HARD_CAP, "25.000000")
    assert (caps["spend_microdollars"], caps["spend_dollars"]) == (8_275, "0.008275")
    assert (caps["soft_cap_reached"], caps["hard_cap_reached"], caps["halted_runs"]) == (
        False,
        False,
        0,
    )
    resets = (d0 + timedelta(days=month)).isoformat()
    assert caps["resets_at"] == f"{resets}T00:00:00Z"


def test_another_tenants_usage_never_appears(acme: Usage, globex: Usage) -> None:
    for user in (acme.world.owner, acme.admin):
        text = session_client(user).get("/api/v1/usage/").content.decode()
        assert "globex-secret-model" not in text
        report = usage(user)
        assert report["totals"]["cost_microdollars"] == 8_275
        assert str(globex.runs["run1"].id) not in text
        assert globex.world.client.id not in {u["user_id"] for u in report["top_users"]}
    theirs = usage(globex.world.owner)
    assert theirs["totals"]["cost_microdollars"] == 7_777_777
    assert [m["name"] for m in theirs["by_model"]] == ["globex-secret-model"]
    assert theirs["caps"]["spend_microdollars"] == 7_777_777
    page = session_client(acme.world.owner).get("/app/usage/").content.decode()
    assert "globex-secret-model" not in page
    assert str(globex.runs["run1"].id) not in page


def test_from_and_to_choose_the_days(acme: Usage) -> None:
    d0 = acme.first_day
    d1 = d0 + timedelta(days=1)
    last_month = d0 - timedelta(days=1)
    owner = acme.world.owner

    one_day = usage(owner, **{"from": d1.isoformat(), "to": d1.isoformat()})
    assert one_day["period"] == {"from": d1.isoformat(), "to": d1.isoformat(), "is_current": False}
    assert (one_day["totals"]["cost_microdollars"], one_day["totals"]["calls"]) == (1_480, 2)
    assert [row["date"] for row in one_day["by_day"]] == [d1.isoformat()]
    assert {m["name"] for m in one_day["by_model"]} == {"tool:http_request", "gpt-4o-mini"}

    previous = usage(
        owner, **{"from": last_month.replace(day=1).isoformat(), "to": last_month.isoformat()}
    )
    assert (previous["totals"]["cost_microdollars"], previous["totals"]["calls"]) == (99_999, 1)
    assert [r["cost_microdollars"] for r in previous["by_day"] if r["calls"]] == [99_999]
    assert previous["by_day"][-1] == {
        "date": last_month.isoformat(),
        "cost_microdollars": 99_999,
        "cost_dollars": "0.099999",
        "input_tokens": 9,
        "output_tokens": 9,
        "calls": 1,
    }
    # The caps are always this month's, whatever the range.
    assert previous["caps"]["spend_microdollars"] == 8_275

    both = usage(
        owner, **{"from": last_month.isoformat(), "to": (d0 + timedelta(days=2)).isoformat()}
    )
    assert (both["totals"]["cost_microdollars"], both["totals"]["calls"]) == (8_275 + 99_999, 6)
    assert len(both["by_day"]) == 4

    # Only `from`: to the end of its month. Only `to`: from the start of its month.
    only_from = usage(owner, **{"from": d1.isoformat()})
    assert only_from["period"]["to"] == both_ends(d0)[1]
    assert only_from["totals"]["cost_microdollars"] == 1_480 + 45
    only_to = usage(owner, to=d0.isoformat())
    assert only_to["period"]["from"] == d0.isoformat()
    assert only_to["totals"]["cost_microdollars"] == 6_750


def both_ends(first: date) -> tuple[str, str]:
    return first.isoformat(), (first + timedelta(days=days_in_month(first) - 1)).isoformat()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-11-01T00:00:00Z"}, "from"),
        ({"from": "2026-11-10", "to": "2026-11-09"}, "from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "to"),
    ],
)
def test_invalid_dates_are_a_400(acme: Usage, params: dict[str, str], field: str) -> None:
    response = session_client(acme.world.owner).get("/api/v1/usage/", params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert field in body["fields"]
    # The page shows the error and this month instead of failing.
    page = session_client(acme.world.owner).get("/app/usage/", params)
    assert page.status_code == 200
    assert "Check the dates" in page.content.decode()


def test_only_owners_and_admins_see_usage(acme: Usage) -> None:
    for user in (acme.world.owner, acme.admin):
        assert session_client(user).get("/api/v1/usage/").status_code == 200
        assert session_client(user).get("/app/usage/").status_code == 200
        # Where they land after signing in (the dashboard) links to the usage page.
        home = session_client(user).get("/", follow=True).content.decode()
        assert 'href="/app/usage/"' in home
    for user in (acme.world.consultant, acme.world.client):
        response = session_client(user).get("/api/v1/usage/")
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
        assert session_client(user).get("/app/usage/").status_code == 403
        landing = session_client(user).get("/", follow=True).content.decode()
        assert 'href="/app/usage/"' not in landing
    with tenant_context(acme.world.tenant):
        issued = api_keys.issue_api_key(
            acting_user=acme.world.owner, name="Partner", scope="write", expires_at=None
        )
    keyed = Client(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}").get("/api/v1/usage/")
    assert keyed.status_code == 403
    anonymous = Client().get("/app/usage/")
    assert anonymous.status_code == 302
    assert Client().get("/api/v1/usage/").status_code == 401


# --------------------------------------------------------------------------- the page


def dollars4(value: str | int) -> str:
    amount = Decimal(value) if isinstance(value, str) else Decimal(value) / 1_000_000
    return f"${amount.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP):,}"


def test_the_page_shows_the_chart_the_caps_and_the_apis_numbers(acme: Usage) -> None:
    report = usage(acme.world.owner)
    response = session_client(acme.world.owner).get("/app/usage/")
    assert response.status_code == 200
    page = response.content.decode()

    # Caps and a progress bar for this month.
    assert "$20.00" in page and "$25.00" in page and "$0.01" in page  # soft, hard, spend
    assert 'role="progressbar"' in page
    assert f'aria-valuenow="{report["caps"]["spend_microdollars"]}"' in page
    assert f'aria-valuemax="{HARD_CAP}"' in page
    assert "Soft cap passed" not in page and "halted" not in page

    # The SVG charts: accessible names, one bar per day with spend, and a data table.
    assert page.count("<svg") == 2
    assert '<title id="spend-chart-title">Spend by day</title>' in page
    assert '<desc id="spend-chart-desc">' in page
    assert '<title id="token-chart-title">Tokens by day</title>' in page
    assert 'aria-labelledby="spend-chart-title spend-chart-desc"' in page
    busy_days = [row for row in report["by_day"] if row["calls"]]
    assert page.count('class="bar-spend"') == len(busy_days) == 3
    assert page.count('class="bar-input"') == 3  # every busy day has input tokens here...
    assert page.count('class="bar-output"') == 3
    assert page.count('<g class="bar">') == 2 * len(report["by_day"])
    assert "<table" in page and "Spend and tokens by day" in page

    # The page's numbers are the API's.
    totals = report["totals"]
    assert f"<dd>{dollars4(totals['cost_dollars'])}</dd>" in page
    assert f"<dd>{totals['input_tokens']:,}</dd>" in page  # 3,600
    assert f"<dd>{totals['output_tokens']:,}</dd>" in page
    assert f"<dd>{totals['calls']:,}</dd>" in page
    for day in report["by_day"]:
        row = (
            f'<tr><th scope="row">{day["date"]}</th><td class="num">{dollars4(day["cost_dollars"])}'
            f'</td><td class="num">{day["input_tokens"]:,}</td><td class="num">'
            f'{day["output_tokens"]:,}</td><td class="num">{day["calls"]:,}</td></tr>'
        )
        assert row in page, day
    for model in report["by_model"]:
        row = (
            f'<tr><th scope="row"><code>{model["name"]}</code></th><td class="num">'
            f'{model["calls"]:,}</td><td class="num">{model["input_tokens"]:,}</td><td class="num">'
            f'{model["output_tokens"]:,}</td><td class="num">'
            f"{dollars4(model['cost_dollars'])}</td></tr>"
        )
        assert row in page, model
    for user in report["top_users"]:
        row = (
            f'{user["name"]} <span class="hint">#{user["user_id"]}</span></th>'
            f'<td class="num">{user["calls"]:,}</td><td class="num">'
            f"{dollars4(user['cost_dollars'])}</td>"
        )
        assert row in page, user
    for run in report["top_runs"]:
        row = (
            f'<code>{run["agent_run_id"]}</code></th><td class="num">{run["calls"]:,}</td>'
            f'<td class="num">{dollars4(run["cost_dollars"])}</td>'
        )
        assert row in page, run
    # And the same range of days.
    assert f'value="{report["period"]["from"]}"' in page
    assert f'value="{report["period"]["to"]}"' in page


def test_the_page_follows_from_and_to(acme: Usage) -> None:
    last_month = acme.first_day - timedelta(days=1)
    params = {"from": last_month.replace(day=1).isoformat(), "to": last_month.isoformat()}
    page = session_client(acme.world.owner).get("/app/usage/", params).content.decode()
    assert f"<dd>{dollars4(99_999)}</dd>" in page
    assert page.count('class="bar-spend"') == 1


def test_an_empty_period_says_so(acme: Usage) -> None:
    fresh = build_world("initech")
    report = usage(fresh.owner)
    assert report["totals"] == {
        "cost_microdollars": 0,
        "cost_dollars": "0.000000",
        "input_tokens": 0,
        "output_tokens": 0,
        "calls": 0,
    }
    assert report["by_model"] == report["top_users"] == report["top_runs"] == []
    assert all(row["calls"] == 0 for row in report["by_day"])
    page = session_client(fresh.owner).get("/app/usage/").content.decode()
    assert "No usage yet this month" in page
    assert "<svg" not in page
    assert "$25.00" in page  # the caps are still shown


def test_passing_the_soft_cap_shows_a_notice(acme: Usage) -> None:
    with tenant_context(acme.world.tenant):
        record(when=timezone.now(), model="gpt-4o", user=acme.world.client, cost=SOFT_CAP)
    report = usage(acme.world.owner)
    assert (report["caps"]["soft_cap_reached"], report["caps"]["hard_cap_reached"]) == (True, False)
    page = session_client(acme.world.owner).get("/app/usage/").content.decode()
    assert "Soft cap passed" in page
    assert "$20.01" in page  # spend so far: 20 dollars and 8,275 micro-dollars
    assert "agent runs are halted" not in page
    assert 'class="capbar over-soft"' in page


def test_reaching_the_hard_cap_says_runs_are_halted_until_next_month(acme: Usage) -> None:
    with tenant_context(acme.world.tenant):
        record(when=timezone.now(), model="gpt-4o", user=acme.world.client, cost=HARD_CAP)
    report = usage(acme.world.owner)
    caps = report["caps"]
    assert (caps["soft_cap_reached"], caps["hard_cap_reached"]) == (True, True)
    page = session_client(acme.world.owner).get("/app/usage/").content.decode()
    next_month = (acme.first_day + timedelta(days=32)).replace(day=1)
    assert "agent runs are halted until" in page
    assert f"{next_month.day} {next_month:%B %Y}, 00:00 UTC" in page
    assert 'role="alert"' in page
    assert 'class="capbar over-hard"' in page
    assert "Soft cap passed" not in page  # the stronger notice replaces it


def test_a_run_halted_by_the_cap_counts_as_reached_even_a_little_below_it(acme: Usage) -> None:
    with tenant_context(acme.world.tenant):
        run = make_run(acme.world, acme.world.client, 0)
        AgentRun.objects.filter(id=run.id).update(
            status=AgentRun.Status.HALTED, error="spend_cap_reached", finished_at=timezone.now()
        )
    caps = usage(acme.world.owner)["caps"]
    assert (caps["hard_cap_reached"], caps["halted_runs"]) == (True, 1)
    assert (
        "agent runs are halted until"
        in session_client(acme.admin).get("/app/usage/").content.decode()
    )


def test_a_plan_without_caps(acme: Usage) -> None:
    with platform_context():
        type(acme.world.tenant).objects.filter(id=acme.world.tenant.id).update(plan="enterprise")
    caps = usage(acme.world.owner)["caps"]
    assert (caps["plan"], caps["soft_microdollars"], caps["hard_microdollars"]) == (
        "enterprise",
        0,
        0,
    )
    assert (caps["soft_cap_reached"], caps["hard_cap_reached"]) == (False, False)
    page = session_client(acme.world.owner).get("/app/usage/").content.decode()
    assert "has no spend cap" in page
    assert 'role="progressbar"' not in page
