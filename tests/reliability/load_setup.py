"""Setup and final report of the load run, inside the app's own environment.

`tests/reliability/load.py` runs these through `manage.py shell -c` (as the runtime role, on
the load database), so the tenants are made by the product's own actions:

    build_tenants(count=20, clients=3, issuer=..., tight=1)   prints the tenants as JSON
    pending_runs(slugs=[...])                                  agent runs not settled yet
    report(slugs=[...])                                        prints the end state as JSON

Each tenant: an owner, a consultant and `clients` clients (each bound to a subject of the
load run's own JWT issuer, as after a first login), a conversation per client, a write-scoped
partner API key and one playbook document (ingested by the worker). The first `tight`
tenants are on the enterprise plan, whose per-user limit is lowered to 2 requests a minute in
this database only, so that their clients' questions meet intended 429s.
"""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from accounts import api_keys
from accounts.models import ApiKey, Membership, User
from agents.documents import add_document, check_upload
from agents.models import AgentRun
from billing.models import PlanLimit
from conversations import actions
from tenants.context import platform_context, tenant_context
from tenants.models import Tenant
from tests.reliability.leaks import tenant_rows

PLAYBOOKS = Path(__file__).resolve().parents[2] / "tenants" / "demo_playbooks"
TIGHT_USER_REQUESTS_PER_MINUTE = 2


def _person(tenant: Tenant, issuer: str, name: str, role: str) -> dict[str, Any]:
    subject = f"{tenant.slug}-{name}"
    with tenant_context(tenant):  # people are tenant rows
        user = User.objects.create(
            username=f"{name}@{tenant.slug}.load",
            email=f"{name}@{tenant.slug}.load",
            first_name=name.title(),
            tenant=tenant,
            oidc_issuer=issuer,
            oidc_subject=subject,
        )
        user.set_unusable_password()
        user.save(update_fields=["password"])
        Membership.objects.create(user=user, role=role)
    return {"id": user.pk, "subject": subject, "role": role}


@transaction.atomic
def _tenant(index: int, *, clients: int, issuer: str, tight: bool) -> dict[str, Any]:
    slug = f"load-{index:02d}-{secrets.token_hex(3)}"
    with platform_context():
        tenant = Tenant.objects.create(
            slug=slug,
            name=f"Load Tenant {index:02d}",
            plan=Tenant.Plan.ENTERPRISE if tight else Tenant.Plan.STARTER,
            review_policy="review_all",
        )
    owner = _person(tenant, issuer, "owner", Membership.Role.OWNER)
    consultant = _person(tenant, issuer, "consultant", Membership.Role.CONSULTANT)
    people = [_person(tenant, issuer, f"client{n}", Membership.Role.CLIENT) for n in range(clients)]
    with tenant_context(tenant):
        owner_user = User.objects.get(pk=owner["id"])
        issued = api_keys.issue_api_key(
            acting_user=owner_user, name="Load partner", scope=ApiKey.Scope.WRITE, expires_at=None
        )
        for client in people:
            user = User.objects.get(pk=client["id"])
            conversation = actions.create_conversation(
                acting_user=user, client=user, title=f"Planning with {slug}"
            )
            client["conversation"] = str(conversation.id)
        playbook = sorted(PLAYBOOKS.glob("*.md"))[index % 4]
        data = playbook.read_bytes()
        upload = check_upload(SimpleUploadedFile(playbook.name, data, "text/markdown"))
        add_document(
            acting_user=User.objects.get(pk=consultant["id"]), upload=upload, title=playbook.stem
        )
    return {
        "tenant_id": str(tenant.id),
        "slug": slug,
        "tight": tight,
        "owner": owner,
        "consultant": consultant,
        "clients": people,
        "api_key": issued.plaintext,
    }


def build_tenants(*, count: int, clients: int, issuer: str, tight: int = 0) -> None:
    if tight:
        with platform_context():
            PlanLimit.objects.filter(plan=Tenant.Plan.ENTERPRISE).update(
                user_requests_per_minute=TIGHT_USER_REQUESTS_PER_MINUTE
            )
    tenants = [_tenant(i, clients=clients, issuer=issuer, tight=i < tight) for i in range(count)]
    for spec in tenants:
        spec["rows"] = tenant_rows(spec["tenant_id"]).as_json()
    print(json.dumps({"tenants": tenants}))


def pending_runs(*, slugs: list[str]) -> None:
    """How many agent runs of each tenant are still queued or running."""
    busy = [AgentRun.Status.QUEUED, AgentRun.Status.RUNNING]
    pending = {}
    for tenant in Tenant.objects.filter(slug__in=slugs):
        with tenant_context(tenant):
            pending[tenant.slug] = AgentRun.objects.filter(status__in=busy).count()
    print(json.dumps(pending))


def report(*, slugs: list[str]) -> None:
    """What each tenant owns now, its agent runs by status, and its audit log verified."""
    out: dict[str, Any] = {}
    for slug in slugs:
        tenant = Tenant.objects.get(slug=slug)
        with tenant_context(tenant):
            statuses: dict[str, int] = {}
            for status in AgentRun.objects.values_list("status", flat=True):
                statuses[status] = statuses.get(status, 0) + 1
        try:
            call_command("audit_verify", tenant=slug, stdout=io.StringIO(), stderr=io.StringIO())
            audit = "ok"
        except CommandError as exc:
            audit = str(exc)
        out[slug] = {
            "rows": tenant_rows(tenant.id).as_json(),
            "runs": statuses,
            "audit": audit,
        }
    print(json.dumps(out))
