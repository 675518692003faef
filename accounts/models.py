"""Users and their role in their tenant.

A user belongs to at most one tenant, set when the account is created (from the identity
provider's signed claim, once that lands) and never changed (DESIGN.md invariant 5).
Platform staff have no tenant. Roles are permissions; the tenant is data ownership.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models

from tenants.models import Tenant, TenantScopedModel


class User(AbstractUser):
    tenant = models.ForeignKey(
        Tenant,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="users",
        help_text="Fixed at creation (a database trigger rejects changes). Empty for staff.",
    )

    class Meta(AbstractUser.Meta):  # type: ignore[name-defined]
        swappable = "AUTH_USER_MODEL"
        constraints = [
            # Lets tenant tables reference (tenant_id, user_id): a row can only point at a
            # user of its own tenant.
            models.UniqueConstraint(fields=["tenant", "id"], name="accounts_user_tenant_id_id_key"),
        ]


class Membership(TenantScopedModel):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        CONSULTANT = "consultant", "Consultant"
        CLIENT = "client", "Client"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantScopedModel.Meta):
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(
                fields=["tenant", "user"], name="accounts_membership_one_per_user"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


def role_in_current_tenant(user: User) -> str | None:
    """The user's role in the tenant of the current context (None if not a member)."""
    if not user.is_authenticated or user.tenant_id is None:
        return None
    return Membership.objects.filter(user=user).values_list("role", flat=True).first()
