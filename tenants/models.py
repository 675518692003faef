"""Tenant and the base class of every customer-facing table (DESIGN.md invariants 1 and 4)."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.core.validators import RegexValidator
from django.db import models

from tenants.context import TenantScopeError, require_tenant_id

DEFAULT_BRAND_COLOR = "#3b5bdb"


class Tenant(models.Model):
    """A consultant's business. Platform registry: readable without a tenant context
    (login needs it), so it holds no customer content."""

    # Written only in a verified platform context; a tenant updates its own branding.
    rls_platform: ClassVar[str] = "tenant_self_update"

    class Plan(models.TextChoices):
        STARTER = "starter", "Starter"
        PRO = "pro", "Pro"
        ENTERPRISE = "enterprise", "Enterprise"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        CLOSED = "closed", "Closed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(
        max_length=63,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")],
        help_text="Lowercase letters, digits and hyphens; used in commands and URLs.",
    )
    name = models.CharField(max_length=200)
    plan = models.CharField(max_length=20, choices=Plan.choices, default=Plan.STARTER)
    region = models.CharField(max_length=32, default="eu-west-1")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    review_policy = models.CharField(
        max_length=20,
        choices=[
            ("review_all", "The consultant reviews every draft"),
            ("flagged", "Review only low-confidence answers and handoffs"),
            ("auto_send", "Send answers straight to the client"),
        ],
        default="review_all",
    )
    # Branding of the consultant's pages and her clients' chat (tenants.branding). The logo
    # is stored re-encoded as PNG (never as uploaded) and served only to signed-in members.
    brand_color = models.CharField(
        max_length=7,
        default=DEFAULT_BRAND_COLOR,
        validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "A colour like #3b5bdb.")],
    )
    logo = models.BinaryField(null=True, blank=True, editable=False)
    logo_updated_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CrossTenantForeignKey(models.ForeignKey):
    """A foreign key that deliberately points outside the tenant: at platform staff, who
    belong to no tenant. The same-tenant check (tenants.E030) skips it; use it for nothing else.
    """


class TenantScopedQuerySet(models.QuerySet):
    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list[Any]:
        objs = list(objs)
        for obj in objs:
            obj.assign_current_tenant()
        return super().bulk_create(objs, *args, **kwargs)


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):  # type: ignore[misc]
    """Default manager of tenant tables: scoped to the current tenant, raises outside one.

    `Model.objects.unscoped()` and `Model.all_tenants` are the explicit, greppable bypasses
    of the ORM check; row-level security still applies to them in the database.
    """

    def get_queryset(self) -> TenantScopedQuerySet:
        tenant_id = require_tenant_id()
        return super().get_queryset().filter(tenant_id=tenant_id)

    def unscoped(self) -> TenantScopedQuerySet:
        return super().get_queryset()


class TenantScopedModel(models.Model):
    """Abstract base of every customer-facing table.

    - `tenant_id uuid not null`, FK to Tenant with PROTECT, indexed (by the unique
      (tenant_id, id) constraint, which also lets child tables reference (tenant_id, id)).
    - Filled from the current tenant context on create; a save for another tenant raises.
    - Its table must get `EnableTenantRLS` in its migration (a system check enforces it).
    """

    # Indexed by the (tenant_id, id) unique constraint below, whose first column it is.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, related_name="+", editable=False, db_index=False
    )

    # Row-level security shape, checked by tenants.checks against the live database.
    rls_support_access: ClassVar[bool] = True
    rls_extra_policies: ClassVar[frozenset[str]] = frozenset()

    objects = TenantScopedManager()
    all_tenants = models.Manager()  # noqa: DJ012 (ruff takes a Manager for a field)

    class Meta:
        abstract = True
        base_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "id"], name="%(app_label)s_%(class)s_tenant_id_id_key"
            ),
        ]

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.assign_current_tenant()
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        self.assign_current_tenant()
        return super().delete(*args, **kwargs)

    def assign_current_tenant(self) -> None:
        current = require_tenant_id()
        if self.tenant_id is None:
            self.tenant_id = current
        elif self.tenant_id != current:
            raise TenantScopeError(
                f"Refusing to save a {type(self).__name__} of tenant {self.tenant_id} "
                f"inside the context of tenant {current}."
            )


class TenantDataKey(TenantScopedModel):
    """A tenant's AES-256 data key, stored only wrapped by the KMS backend's KEK."""

    id = models.BigAutoField(primary_key=True)
    version = models.PositiveIntegerField()
    wrapped_key = models.BinaryField()
    kek_backend = models.CharField(max_length=20)
    kek_version = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    rewrapped_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantScopedModel.Meta):
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant", "version"], name="tenant_data_key_version"),
        ]

    def __str__(self) -> str:
        return f"data key v{self.version} ({self.kek_backend}:{self.kek_version})"


class Credential(TenantScopedModel):
    """A tenant's secret (model provider key, vendor token): ciphertext only, never shown."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (Ollama, vLLM, ...)"
        STRIPE = "stripe", "Stripe"
        SALESFORCE = "salesforce", "Salesforce"
        HTTP_BEARER = "http_bearer", "HTTP bearer token"
        HTTP_BASIC = "http_basic", "HTTP basic (user:password)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=30, choices=Kind.choices)
    metadata = models.JSONField(
        default=dict, blank=True, help_text="Non-secret: base URL, account id."
    )
    ciphertext = models.BinaryField(editable=False)
    nonce = models.BinaryField(editable=False)
    key_version = models.PositiveIntegerField(editable=False)
    last_four = models.CharField(max_length=4, blank=True, editable=False)
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["name"]
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant", "name"], name="tenant_credential_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"
