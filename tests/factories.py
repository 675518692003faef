"""Test data built through the same code paths the product uses (actions, tenant_context).

Actors, per tenant: an owner, a consultant and two clients, each client with a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import factory

from accounts.models import Membership, User
from conversations import actions
from conversations.models import Conversation
from tenants.context import platform_context, tenant_context
from tenants.models import Tenant


class TenantFactory(factory.django.DjangoModelFactory[Tenant]):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())

    @classmethod
    def _create(cls, model_class: type[Tenant], *args: Any, **kwargs: Any) -> Tenant:
        # Tenants are platform rows: written only in a verified platform context.
        with platform_context():
            tenant: Tenant = super()._create(model_class, *args, **kwargs)
        return tenant


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}@example.test")
    email = factory.LazyAttribute(lambda o: o.username)
    password = factory.django.Password("correct horse battery")

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        # People are tenant rows (staff, platform rows): written in their own context.
        tenant = kwargs.get("tenant")
        scope = tenant_context(tenant) if tenant is not None else platform_context()
        with scope:
            user: User = super()._create(model_class, *args, **kwargs)
        return user


@dataclass
class World:
    tenant: Tenant
    owner: User
    consultant: User
    client: User
    other_client: User
    conversations: list[Conversation] = field(default_factory=list)

    @property
    def conversation_ids(self) -> set[str]:
        return {str(c.id) for c in self.conversations}


def build_world(slug: str, *, conversation_title: str = "Strategy session") -> World:
    tenant = TenantFactory.create(slug=slug)
    people: dict[str, User] = {
        role: UserFactory.create(
            username=f"{name}@{slug}.test", tenant=tenant, first_name=name.title()
        )
        for role, name in (
            ("owner", "olivia"),
            ("consultant", "connor"),
            ("client", "cleo"),
            ("other_client", "cody"),
        )
    }
    roles = {
        "owner": Membership.Role.OWNER,
        "consultant": Membership.Role.CONSULTANT,
        "client": Membership.Role.CLIENT,
        "other_client": Membership.Role.CLIENT,
    }
    world = World(
        tenant=tenant,
        owner=people["owner"],
        consultant=people["consultant"],
        client=people["client"],
        other_client=people["other_client"],
    )
    with tenant_context(tenant):
        for key, user in people.items():
            Membership.objects.create(user=user, role=roles[key])
    for client in (world.client, world.other_client):
        # As the client herself: the audit log records its verified actor.
        with tenant_context(tenant, user_id=client.pk):
            conversation = actions.create_conversation(
                acting_user=client,
                client=client,
                title=f"{conversation_title} ({client.first_name})",
            )
            actions.post_message(
                acting_user=client,
                role=Membership.Role.CLIENT,
                conversation=conversation,
                body=f"Hello from {slug}",
                start_agent=False,
            )
            world.conversations.append(conversation)
    return world


def set_plan(tenant: Tenant, plan: str) -> Tenant:
    """Move a tenant to another plan, as the support admin does: a platform write (its
    signal invalidates the tenant's cached registry)."""
    fresh = Tenant.objects.get(id=tenant.id)
    fresh.plan = plan
    with platform_context():
        fresh.save(update_fields=["plan", "updated_at"])
    tenant.plan = plan
    return fresh
