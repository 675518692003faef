"""The tenant's audit log: who did what to which resource, from where.

Append-only in intent; the audit issue makes it so in the database (write function,
per-tenant hash chain, signed export).
"""

from __future__ import annotations

from django.db import models

from tenants.models import TenantScopedModel


class AuditEvent(TenantScopedModel):
    class ActorType(models.TextChoices):
        USER = "user", "User"
        SUPPORT = "support", "Support staff"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"
        AGENT = "agent", "Agent"

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=64)
    resource_type = models.CharField(max_length=64, blank=True)
    resource_id = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    context = models.JSONField(default=dict, blank=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="audit_tenant_created_idx"),
            models.Index(fields=["tenant", "action"], name="audit_tenant_action_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"
