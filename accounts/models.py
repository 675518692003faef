"""Users, their role in their tenant, partner API keys and support sessions.

A user belongs to at most one tenant, bound at first login from the identity provider's
signed claim and never changed (DESIGN.md invariant 5; a database trigger enforces it).
Platform staff have no tenant. Roles are permissions; the tenant is data ownership.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import connection, models
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from tenants.context import Principal, current_principal, current_role, require_tenant_id
from tenants.models import CrossTenantForeignKey, Tenant, TenantScopedModel


class User(AbstractUser):
    tenant = models.ForeignKey(
        Tenant,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="users",
        help_text="Bound at first login and never changed. Empty for platform staff.",
    )
    oidc_issuer = models.CharField(max_length=255, blank=True, default="")
    oidc_subject = models.CharField(max_length=255, blank=True, default="")
    # Raised when the account is deactivated: every session signed before stops working, and
    # stays ended if the account is reactivated (see _get_session_auth_hash).
    session_epoch = models.PositiveIntegerField(default=0, editable=False)

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        # Django ends a session whose stored hash no longer matches. OIDC accounts have no
        # password to change, so the epoch is what a deactivation changes.
        base: str = super()._get_session_auth_hash(secret=secret)  # type: ignore[misc]
        if not self.session_epoch:
            return base
        return salted_hmac(
            "accounts.User.session_epoch",
            f"{base}:{self.session_epoch}",
            secret=secret,
            algorithm="sha256",
        ).hexdigest()

    class Meta(AbstractUser.Meta):  # type: ignore[name-defined]
        swappable = "AUTH_USER_MODEL"
        constraints = [
            # Lets tenant tables reference (tenant_id, user_id): a row can only point at a
            # user of its own tenant.
            models.UniqueConstraint(fields=["tenant", "id"], name="accounts_user_tenant_id_id_key"),
            models.UniqueConstraint(
                fields=["oidc_issuer", "oidc_subject"],
                condition=~Q(oidc_subject=""),
                name="accounts_user_one_per_oidc_subject",
            ),
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
    # The database read the role when this user's context was entered: no second query.
    if current_principal() == Principal.user(user.pk):
        return current_role()
    # Every authenticated request asks this once. One indexed lookup, written as SQL because
    # compiling the same query through the ORM costs three times what running it does
    # (bench/machinery.py). Row-level security admits only the current tenant's rows; the
    # tenant filter says the same, as the scoped manager would (and raises outside a tenant).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT role FROM public.accounts_membership WHERE tenant_id = %s AND user_id = %s",
            [require_tenant_id(), user.pk],
        )
        row = cursor.fetchone()
    return str(row[0]) if row else None


class ApiKey(TenantScopedModel):
    """A partner API key. Only a SHA-256 of the key is stored; the key is shown once."""

    class Scope(models.TextChoices):
        READ = "read", "Read"
        WRITE = "write", "Read and write"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="Public part, shown in lists and logs.")
    key_hash = models.CharField(max_length=64, editable=False)
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.READ)
    created_by = models.ForeignKey(
        User, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at"]
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant", "prefix"], name="accounts_apikey_prefix"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def default_support_expiry() -> datetime:
    return timezone.now() + timedelta(minutes=settings.SUPPORT_SESSION_DEFAULT_MINUTES)


class SupportSession(TenantScopedModel):
    """Time-limited access of one platform staff member to one tenant, with a reason.

    While it is valid (not ended, not expired), staff enter the tenant through it: the
    database verifies the session each time a support request enters the tenant
    (`playbook_enter`), and the context it binds admits that tenant's rows only.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    staff = CrossTenantForeignKey(
        User,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"is_staff": True, "tenant__isnull": True},
    )
    # Who it was, as the tenant sees it: staff accounts are platform rows that no tenant's
    # context reads (accounts migration 0006), so the name is kept with the session.
    staff_username = models.CharField(max_length=150, default="", editable=False)
    staff_name = models.CharField(max_length=300, default="", editable=False)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=default_support_expiry)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.staff} → {self.tenant_id} until {self.expires_at:%Y-%m-%d %H:%M}"

    @property
    def is_active(self) -> bool:
        return self.ended_at is None and self.expires_at > timezone.now()


def default_invitation_expiry() -> datetime:
    return timezone.now() + timedelta(days=settings.INVITATION_DAYS)


class Invitation(TenantScopedModel):
    """An invitation to join the tenant with a role, sent as a link.

    People still sign in through the organisation's identity provider, which places them in
    the tenant; the invitation gives the signed-in account whose email it names the invited
    role. The link's token names its tenant (`inv_<tenant>_<secret>`), so it is looked up under
    row-level security in that tenant; only its SHA-256 is stored.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Membership.Role.choices)
    token_hash = models.CharField(max_length=64, editable=False)
    invited_by = models.ForeignKey(
        User, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=default_invitation_expiry)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at"]
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant", "token_hash"], name="invitation_token"),
        ]
        indexes = [models.Index(fields=["tenant", "email"], name="invitation_tenant_email_idx")]

    def __str__(self) -> str:
        return f"{self.email} as {self.role}"

    @property
    def is_open(self) -> bool:
        return (
            self.accepted_at is None
            and self.revoked_at is None
            and self.expires_at > timezone.now()
        )
