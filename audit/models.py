"""The tenant's audit log: who did what to which resource, from where — append-only and
hash-chained per tenant.

Rows are written only by the database function `audit_record_event` (migration 0002),
which takes the tenant from the session setting, numbers the event (`seq`) and chains it:
`hash = sha256(prev_hash || canonical JSON of the event)`. The runtime role may EXECUTE
the function but not INSERT, UPDATE or DELETE; a trigger rejects UPDATE, DELETE and
TRUNCATE for every role but a superuser. Only the tenant's owners and admins (and support
inside a support session) can read it.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models

from tenants.models import TenantScopedModel


class AuditEvent(TenantScopedModel):
    class ActorType(models.TextChoices):
        USER = "user", "User"
        SUPPORT = "support", "Support staff"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"
        AGENT = "agent", "Agent"

    # Read only by the readers the verified context admits (audit migration 0003).
    rls_read_function: ClassVar[str] = "playbook_audit_tenant"

    id = models.BigAutoField(primary_key=True)
    seq = models.BigIntegerField(help_text="Position in the tenant's chain, from 1.")
    created_at = models.DateTimeField()
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=64)
    resource_type = models.CharField(max_length=64, blank=True)
    resource_id = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    agent_run_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    payload_sha256 = models.CharField(max_length=64, blank=True)
    context = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-seq"]
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant", "seq"], name="audit_event_tenant_seq"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="audit_tenant_created_idx"),
            models.Index(fields=["tenant", "action"], name="audit_tenant_action_idx"),
            models.Index(fields=["tenant", "actor_type"], name="audit_tenant_actor_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"

    @property
    def is_support_access(self) -> bool:
        return self.actor_type == self.ActorType.SUPPORT


class AuditCheckpoint(TenantScopedModel):
    """The chain's head at a moment, signed with the platform key. A later rewrite of the
    log (even one that re-hashes everything after the change) contradicts the checkpoint."""

    id = models.BigAutoField(primary_key=True)
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    key_id = models.CharField(max_length=32)
    signature = models.TextField()

    class Meta(TenantScopedModel.Meta):
        ordering = ["-seq"]
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(fields=["tenant", "seq"], name="audit_checkpoint_tenant_seq"),
        ]

    def __str__(self) -> str:
        return f"checkpoint #{self.seq}"
