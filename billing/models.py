"""Usage: every model and tool call of an agent run, attributed to tenant, user and run."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from tenants.models import TenantScopedModel


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
