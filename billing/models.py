"""Usage: every model and tool call of an agent run, attributed to tenant, user and run."""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.conf import settings
from django.db import models

from tenants.models import Tenant, TenantScopedModel


class UsageEvent(TenantScopedModel):
    class Kind(models.TextChoices):
        MODEL = "model", "Model call"
        TOOL = "tool", "Tool call"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    idempotency_key = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    agent_run = models.ForeignKey(
        "agents.AgentRun", on_delete=models.PROTECT, null=True, blank=True, related_name="usage"
    )
    model = models.CharField(max_length=100, blank=True)
    tool = models.CharField(max_length=100, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_microdollars = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at"]
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"], name="usage_event_idempotency"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="usage_tenant_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.model or self.tool}"


class ModelPrice(models.Model):
    """What a model or tool call costs, in micro-dollars (platform data: rows, not code).

    Not a TenantScopedModel: the platform's price list, the same for every tenant; it holds
    no customer data."""

    # Read by all, written only in a verified platform context (EnablePlatformRLS).
    rls_platform: ClassVar[str] = "all"

    name = models.CharField(max_length=100, unique=True, help_text="Model name, or tool:<name>.")
    input_per_million = models.BigIntegerField(default=0, help_text="Micro-dollars per 1M tokens.")
    output_per_million = models.BigIntegerField(default=0, help_text="Micro-dollars per 1M tokens.")
    per_call = models.BigIntegerField(default=0, help_text="Micro-dollars per call (tools).")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        return (
            self.per_call
            + (input_tokens * self.input_per_million + 999_999) // 1_000_000
            + (output_tokens * self.output_per_million + 999_999) // 1_000_000
        )


class PlanLimit(models.Model):
    """Rate limits and monthly spend caps per plan (platform data). 0 means unlimited.

    Not a TenantScopedModel: one row per plan, shared by its tenants; no customer data."""

    # Read by all, written only in a verified platform context (EnablePlatformRLS).
    rls_platform: ClassVar[str] = "all"

    plan = models.CharField(max_length=20, choices=Tenant.Plan.choices, unique=True)
    requests_per_minute = models.PositiveIntegerField(default=60, help_text="Per tenant.")
    user_requests_per_minute = models.PositiveIntegerField(default=20, help_text="Per user.")
    tokens_per_minute = models.PositiveIntegerField(default=200_000, help_text="Per tenant.")
    soft_cap_microdollars = models.BigIntegerField(default=0, help_text="Monthly: warn.")
    hard_cap_microdollars = models.BigIntegerField(default=0, help_text="Monthly: halt runs.")

    class Meta:
        ordering = ["plan"]

    def __str__(self) -> str:
        return f"limits of {self.plan}"


class StripeCustomer(TenantScopedModel):
    """The tenant's customer at Stripe, which its metered usage is billed to."""

    id = models.BigAutoField(primary_key=True)
    customer_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantScopedModel.Meta):
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant"], name="stripe_customer_one_per_tenant"),
        ]

    def __str__(self) -> str:
        return self.customer_id


class MeterEvent(TenantScopedModel):
    """Outbox of Stripe meter events: one per usage event that costs money, written in the
    same transaction; sent (and resent until acknowledged) by a Celery beat task. Stripe
    de-duplicates on `identifier` (the usage event id), so sending twice never bills twice."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed (will retry)"

    id = models.BigAutoField(primary_key=True)
    usage_event = models.ForeignKey(
        UsageEvent, on_delete=models.PROTECT, related_name="meter_events"
    )
    identifier = models.CharField(max_length=100)
    value = models.BigIntegerField(help_text="Micro-dollars.")
    timestamp = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    next_attempt_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantScopedModel.Meta):
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant", "identifier"], name="meter_event_identifier"),
        ]
        indexes = [
            models.Index(
                fields=["tenant", "status", "next_attempt_at"], name="meter_tenant_due_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.identifier} ({self.status})"
