"""Two demo tenants with people and conversations, for `make dev`. Idempotent."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Membership, User
from agents.models import Document
from agents.tasks import ingest_document
from conversations import actions
from tenants.context import directory_context, platform_context, tenant_context
from tenants.models import Tenant

PLAYBOOK_DIR = Path(__file__).resolve().parents[2] / "demo_playbooks"
DEMO_PASSWORD = "playbook-demo"  # noqa: S105 (development-only demo accounts)

DEMO_TENANTS: list[dict[str, Any]] = [
    {
        "slug": "northwind",
        "name": "Northwind Coaching",
        "plan": Tenant.Plan.PRO,
        "review_policy": "review_all",
        "brand_color": "#3b5bdb",
        "playbooks": [
            ("northwind-board-meetings.md", "Running your first board meetings"),
            ("northwind-hiring-sales-leaders.md", "Hiring a head of sales"),
        ],
        "people": [
            ("nora", "Nora", "Northwind", Membership.Role.OWNER),
            ("nick", "Nick", "Consultant", Membership.Role.CONSULTANT),
            ("cara", "Cara", "Client", Membership.Role.CLIENT),
            ("carl", "Carl", "Client", Membership.Role.CLIENT),
        ],
        "conversations": [
            (
                "cara",
                "Preparing my first board meeting",
                "How should I structure the agenda for my first board meeting as CEO?",
            ),
            (
                "carl",
                "Hiring a head of sales",
                "What should the scorecard for a head of sales look like?",
            ),
        ],
    },
    {
        "slug": "bluebird",
        "name": "Bluebird Advisory",
        "plan": Tenant.Plan.STARTER,
        "review_policy": "flagged",
        "brand_color": "#0c8599",
        "playbooks": [
            ("bluebird-pricing.md", "Pricing advisory services"),
            ("bluebird-quarterly-planning.md", "Quarterly planning"),
        ],
        "people": [
            ("bea", "Bea", "Bluebird", Membership.Role.OWNER),
            ("ben", "Ben", "Consultant", Membership.Role.CONSULTANT),
            ("cleo", "Cleo", "Client", Membership.Role.CLIENT),
            ("cody", "Cody", "Client", Membership.Role.CLIENT),
        ],
        "conversations": [
            (
                "cleo",
                "Pricing our new service",
                "Should we price the new retainer by the hour or by outcome?",
            ),
            ("cody", "Quarterly planning", "Which three metrics should we review every quarter?"),
        ],
    },
]


SUPPORT_USERNAME = "support@playbook.demo"


class Command(BaseCommand):
    help = "Create the demo tenants, people and conversations (development only)."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError(
                "seed_demo creates accounts with a known password; not in production."
            )
        if settings.DEV_IDP:
            from devidp.clients import ensure_web_client, site_uris

            ensure_web_client(*site_uris(settings.SITE_URL))
        for spec in DEMO_TENANTS:
            self.seed_tenant(spec)
        self.seed_support_staff()
        self.stdout.write(
            f"\nDemo accounts (password for all: {DEMO_PASSWORD}); log in at "
            f"{settings.SITE_URL}/login/\n"
        )
        for spec in DEMO_TENANTS:
            self.stdout.write(f"  {spec['name']} ({spec['slug']})")
            for username, _first, _last, role in spec["people"]:
                self.stdout.write(f"    {username}@{spec['slug']}.demo  {role}")
        self.stdout.write(
            f"  Platform support (admin at {settings.SITE_URL}/admin/; first set up a TOTP app "
            f"at {settings.SITE_URL}/admin/enroll/)\n    {SUPPORT_USERNAME}\n"
        )

    @transaction.atomic
    def seed_support_staff(self) -> None:
        with platform_context():  # platform staff are platform rows
            self.create_support_staff()

    def create_support_staff(self) -> None:
        if User.objects.filter(username=SUPPORT_USERNAME).exists():
            return
        staff = User(
            username=SUPPORT_USERNAME,
            email=SUPPORT_USERNAME,
            first_name="Sam",
            last_name="Support",
            is_staff=True,
            is_superuser=True,
        )
        staff.set_password(DEMO_PASSWORD)
        staff.save()

    @transaction.atomic
    def seed_tenant(self, spec: dict[str, Any]) -> None:
        with platform_context():  # an operator command creating platform rows
            tenant, created = Tenant.objects.get_or_create(
                slug=spec["slug"],
                defaults={
                    "name": spec["name"],
                    "plan": spec["plan"],
                    "review_policy": spec["review_policy"],
                    "brand_color": spec["brand_color"],
                },
            )
        # People are tenant rows: written in the tenant's context.
        with tenant_context(tenant):
            if created:
                self.seed_people(tenant, spec)
            elif settings.DEV_IDP:  # demo data from before the local provider: give it logins
                for username, _first, _last, role in spec["people"]:
                    user = User.objects.filter(username=f"{username}@{spec['slug']}.demo").first()
                    if user is not None and not user.oidc_subject:
                        self.register_identity(user, tenant, role)
        if created:
            self.stdout.write(self.style.SUCCESS(f"Created demo tenant {tenant.name}"))

    def seed_people(self, tenant: Tenant, spec: dict[str, Any]) -> None:
        users: dict[str, User] = {}
        for username, first, last, role in spec["people"]:
            user = User(
                username=f"{username}@{spec['slug']}.demo",
                email=f"{username}@{spec['slug']}.demo",
                first_name=first,
                last_name=last,
                tenant=tenant,
            )
            user.set_password(DEMO_PASSWORD)
            user.save()
            users[username] = user
            if settings.DEV_IDP:
                self.register_identity(user, tenant, role)
        for username, _first, _last, role in spec["people"]:
            Membership.objects.create(user=users[username], role=role)
        consultant = next(users[n] for n, *_rest, r in spec["people"] if r == "consultant")
        for filename, title in spec["playbooks"]:
            self.add_playbook(tenant, consultant, filename, title)
        for client_name, title, question in spec["conversations"]:
            client = users[client_name]
            conversation = actions.create_conversation(
                acting_user=client, client=client, title=title
            )
            # A real agent run: its draft waits in the consultant's review queue once the
            # worker has picked it up.
            actions.post_message(
                acting_user=client,
                role=Membership.Role.CLIENT,
                conversation=conversation,
                body=question,
            )

    def add_playbook(self, tenant: Tenant, consultant: User, filename: str, title: str) -> None:
        data = (PLAYBOOK_DIR / filename).read_bytes()
        document = Document.objects.create(
            title=title,
            filename=filename,
            content_type="text/markdown",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            source=data,
            created_by=consultant,
        )
        # Ingested now, in this process, so the demo's first questions find it.
        ingest_document.apply(args=(str(document.id),), kwargs={"tenant_id": str(tenant.id)})

    def register_identity(self, user: User, tenant: Tenant, role: str) -> None:
        """The person's account at the local provider, already bound (as after a first login)."""
        from devidp.models import DevIdentity

        with directory_context():  # the provider's directory (devidp migration 0002)
            identity = DevIdentity.objects.create(
                user=user, tenant_claim=str(tenant.id), roles=[role]
            )
        user.oidc_issuer = settings.OIDC_ISSUER
        user.oidc_subject = str(identity.subject)
        user.save(update_fields=["oidc_issuer", "oidc_subject"])
