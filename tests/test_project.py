"""Project-level guarantees: migrations match the models, the demo seed is repeatable."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import Membership, User
from accounts.queries import find_user
from conversations.models import Conversation
from tenants.context import tenant_context
from tenants.models import Tenant


@pytest.mark.django_db(databases=["default", "owner"])
def test_models_and_migrations_agree() -> None:
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_seed_demo_is_repeatable_and_each_tenant_sees_its_own_data() -> None:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    call_command("seed_demo", stdout=StringIO())
    assert "cara@northwind.demo" in out.getvalue()
    assert Tenant.objects.filter(slug__in=["northwind", "bluebird"]).count() == 2
    people = 0
    for slug in ("northwind", "bluebird"):  # people are tenant rows: counted in each tenant
        with tenant_context(Tenant.objects.get(slug=slug)):
            people += User.objects.filter(username__endswith=".demo").count()
    assert people == 8
    staff = find_user("username", "support@playbook.demo")
    assert staff is not None and staff.is_staff
    for slug in ("northwind", "bluebird"):
        tenant = Tenant.objects.get(slug=slug)
        with tenant_context(tenant):
            assert Membership.objects.count() == 4
            clients = set(
                Conversation.objects.values_list("client__username", flat=True).distinct()
            )
            assert clients and all(name.endswith(f"@{slug}.demo") for name in clients)


def test_the_openapi_schema_generates_without_warnings() -> None:
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = out.getvalue()
    for path in (
        "/api/v1/me",
        "/api/v1/conversations/",
        "/api/v1/api-keys/",
        "/api/v1/support-sessions/",
    ):
        assert f"{path}:" in schema
    assert "scheme: bearer" in schema
