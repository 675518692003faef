"""Usage of the tenant's agents, for owners and admins: `GET /api/v1/usage/?from=&to=`.

Spend against the plan's monthly caps, and spend and tokens by day, by model or tool, by
user and by agent run. Everything is summed by PostgreSQL (GROUP BY with `TruncDate` in UTC)
from `UsageEvent` rows, under the tenant's context: row-level security decides what is
counted, so another tenant's usage cannot appear. The server-rendered page at `/app/usage/`
(billing/views.py) shows the same report.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Case, CharField, Count, F, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce, Concat, TruncDate
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.roles import ADMINS
from agents.models import AgentRun
from billing.limiter import limits_for, period_of, period_start, settled_spend_from_database
from billing.models import UsageEvent
from tenants.api import TenantScopedViewSet
from tenants.context import require_tenant_id
from tenants.inputs import SaneDateField

MICRO = 1_000_000
MAX_RANGE_DAYS = 366
TOP = 10

# --------------------------------------------------------------------------- the range


def dollars(microdollars: int) -> Decimal:
    """Exact dollars of an amount in micro-dollars."""
    return (Decimal(int(microdollars)) / MICRO).quantize(Decimal("0.000001"))


def next_period_start(period: str) -> datetime:
    start = period_start(period)
    return (start + timedelta(days=32)).replace(day=1)


def current_period_range(moment: datetime | None = None) -> tuple[date, date]:
    """The first and last day (UTC) of the calendar month of `moment` (default: now)."""
    period = period_of(moment)
    return period_start(period).date(), next_period_start(period).date() - timedelta(days=1)


class UsageRangeSerializer(serializers.Serializer):
    """`?from=YYYY-MM-DD&to=YYYY-MM-DD`, both days included, in UTC. Default: this month."""

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # `from` is a Python keyword: declared here, read as `start` / `end`.
        fields["from"] = SaneDateField(
            required=False, source="start", help_text="First day (UTC), included."
        )
        fields["to"] = SaneDateField(
            required=False, source="end", help_text="Last day (UTC), included."
        )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        default_start, default_end = current_period_range()
        start: date | None = attrs.get("start")
        end: date | None = attrs.get("end")
        if start is None and end is None:
            start, end = default_start, default_end
        elif start is None and end is not None:
            start = end.replace(day=1)  # the start of end's month
        elif start is not None and end is None:
            end = (start.replace(day=1) + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        assert start is not None and end is not None  # noqa: S101 (for mypy)
        if start > end:
            raise serializers.ValidationError({"from": ["Must be on or before 'to'."]})
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise serializers.ValidationError(
                {"to": [f"The range may cover at most {MAX_RANGE_DAYS} days."]}
            )
        return {"start": start, "end": end}


RANGE_PARAMETERS = [
    OpenApiParameter(
        "from", OpenApiTypes.DATE, description="First day, UTC (default: this month's first)."
    ),
    OpenApiParameter(
        "to", OpenApiTypes.DATE, description="Last day, UTC, included (default: this month's last)."
    ),
]

# --------------------------------------------------------------------------- the report


def _metrics() -> dict[str, Any]:
    # Named apart from the model's fields (an annotation may not shadow `input_tokens`).
    return {
        "sum_cost": Coalesce(Sum("cost_microdollars"), 0),
        "sum_input": Coalesce(Sum("input_tokens"), 0),
        "sum_output": Coalesce(Sum("output_tokens"), 0),
        "n_calls": Count("id"),
    }


def _amounts(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "cost_microdollars": int(row["sum_cost"]),
        "cost_dollars": dollars(row["sum_cost"]),
        "input_tokens": int(row["sum_input"]),
        "output_tokens": int(row["sum_output"]),
        "calls": int(row["n_calls"]),
    }


def _user_name(row: dict[str, Any]) -> str:
    full = f"{row['user__first_name']} {row['user__last_name']}".strip()
    return full or row["user__username"] or str(row["user_id"])


def _caps(now: datetime) -> dict[str, Any]:
    limit = limits_for()
    period = period_of(now)
    spend = settled_spend_from_database(period)
    soft, hard = int(limit.soft_cap_microdollars), int(limit.hard_cap_microdollars)
    halted_runs = AgentRun.objects.filter(
        status=AgentRun.Status.HALTED,
        error="spend_cap_reached",
        finished_at__gte=period_start(period),
    ).count()
    return {
        "plan": limit.plan,
        "period": period,
        "period_start": period_start(period),
        "resets_at": next_period_start(period),
        "soft_microdollars": soft,
        "soft_dollars": dollars(soft),
        "hard_microdollars": hard,
        "hard_dollars": dollars(hard),
        "spend_microdollars": spend,
        "spend_dollars": dollars(spend),
        "soft_cap_reached": soft > 0 and spend >= soft,
        # The limiter refuses a call whose estimate would pass the cap, so runs can halt a
        # little below it: a run halted for the cap this period counts as reached too.
        "hard_cap_reached": hard > 0 and (spend >= hard or halted_runs > 0),
        "halted_runs": halted_runs,
    }


def usage_report(start: date, end: date, *, now: datetime | None = None) -> dict[str, Any]:
    """The report of the current tenant for the days `start`..`end` (UTC, both included)."""
    now = now or datetime.now(UTC)
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    events: QuerySet[UsageEvent] = UsageEvent.objects.filter(
        created_at__gte=since, created_at__lt=until
    ).order_by()
    totals = events.aggregate(**_metrics())

    daily = {
        row["day"]: row
        for row in events.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(**_metrics())
        .order_by("day")
    }
    zero = {"sum_cost": 0, "sum_input": 0, "sum_output": 0, "n_calls": 0}
    by_day = [
        {"date": day, **_amounts(daily.get(day, zero))}
        for day in (start + timedelta(days=n) for n in range((end - start).days + 1))
    ]

    name = Case(
        When(kind=UsageEvent.Kind.TOOL, then=Concat(Value("tool:"), F("tool"))),
        default=F("model"),
        output_field=CharField(),
    )
    by_model = [
        {"name": row["usage_name"] or "(unnamed)", "kind": row["kind"], **_amounts(row)}
        for row in events.annotate(usage_name=name)
        .values("usage_name", "kind")
        .annotate(**_metrics())
        .order_by("-sum_cost", "-n_calls", "usage_name")
    ]
    top_users = [
        {"user_id": row["user_id"], "name": _user_name(row), **_amounts(row)}
        for row in events.filter(user__isnull=False)
        .values("user_id", "user__first_name", "user__last_name", "user__username")
        .annotate(**_metrics())
        .order_by("-sum_cost", "-n_calls", "user_id")[:TOP]
    ]
    top_runs = [
        {"agent_run_id": row["agent_run_id"], **_amounts(row)}
        for row in events.filter(agent_run__isnull=False)
        .values("agent_run_id")
        .annotate(**_metrics())
        .order_by("-sum_cost", "-n_calls", "agent_run_id")[:TOP]
    ]
    current_start, current_end = current_period_range(now)
    return {
        "tenant_id": require_tenant_id(),
        "period": {
            "from": start,
            "to": end,
            "is_current": (start, end) == (current_start, current_end),
        },
        "caps": _caps(now),
        "totals": _amounts(totals),
        "by_day": by_day,
        "by_model": by_model,
        "top_users": top_users,
        "top_runs": top_runs,
    }


# --------------------------------------------------------------------------- serializers


def _money(help_text: str) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=20, decimal_places=6, help_text=help_text)


class UsageAmountsSerializer(serializers.Serializer):
    cost_microdollars = serializers.IntegerField()
    cost_dollars = _money("The same cost in dollars (exact, as a string).")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    calls = serializers.IntegerField()


class UsagePeriodSerializer(serializers.Serializer):
    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = serializers.DateField(help_text="First day (UTC).")
        fields["to"] = serializers.DateField(help_text="Last day (UTC), included.")
        fields["is_current"] = serializers.BooleanField(help_text="The range is this month.")
        return fields


class UsageCapsSerializer(serializers.Serializer):
    plan = serializers.CharField()
    period = serializers.CharField(help_text="The calendar month (UTC) the caps apply to.")
    period_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(help_text="When the month's spend starts again at 0.")
    soft_microdollars = serializers.IntegerField(help_text="0: no soft cap.")
    soft_dollars = _money("Soft cap in dollars.")
    hard_microdollars = serializers.IntegerField(help_text="0: no hard cap.")
    hard_dollars = _money("Hard cap in dollars.")
    spend_microdollars = serializers.IntegerField(help_text="This month's spend so far.")
    spend_dollars = _money("This month's spend in dollars.")
    soft_cap_reached = serializers.BooleanField()
    hard_cap_reached = serializers.BooleanField(help_text="Agent runs are halted.")
    halted_runs = serializers.IntegerField(help_text="Runs halted by the hard cap this month.")


class UsageDaySerializer(UsageAmountsSerializer):
    date = serializers.DateField()


class UsageModelSerializer(UsageAmountsSerializer):
    name = serializers.CharField(help_text="The model, or tool:<name>.")
    kind = serializers.ChoiceField(choices=UsageEvent.Kind.choices)


class UsageUserSerializer(UsageAmountsSerializer):
    user_id = serializers.IntegerField()
    name = serializers.CharField()


class UsageRunSerializer(UsageAmountsSerializer):
    agent_run_id = serializers.UUIDField()


class UsageSerializer(serializers.Serializer):
    tenant_id = serializers.UUIDField()
    period = UsagePeriodSerializer()
    caps = UsageCapsSerializer()
    totals = UsageAmountsSerializer(help_text="Spend and tokens in the range.")
    by_day = UsageDaySerializer(many=True, help_text="Every day of the range, oldest first.")
    by_model = UsageModelSerializer(many=True, help_text="Most expensive first.")
    top_users = UsageUserSerializer(many=True, help_text=f"The {TOP} users who cost most.")
    top_runs = UsageRunSerializer(many=True, help_text=f"The {TOP} agent runs that cost most.")


def usage_data(start: date, end: date) -> dict[str, Any]:
    """The report as the API returns it (JSON-ready); the page renders the same data."""
    return dict(UsageSerializer(usage_report(start, end)).data)


# --------------------------------------------------------------------------- the endpoint


class UsageViewSet(TenantScopedViewSet):
    model = UsageEvent
    serializer_class = UsageSerializer
    roles = {"*": ADMINS}

    @extend_schema(parameters=RANGE_PARAMETERS, responses=UsageSerializer)
    def summary(self, request: Request) -> Response:
        """Your organisation's usage: this month's spend against the plan's soft and hard
        caps, and spend and tokens by day, by model or tool, by user and by agent run.
        Costs are in micro-dollars (integers) and in dollars (exact decimal strings)."""
        params = UsageRangeSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        return Response(usage_data(params.validated_data["start"], params.validated_data["end"]))
