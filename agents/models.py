"""The agent platform's data: entitlements, the playbook corpus, agent runs, checkpoints.

Everything a tenant owns is a TenantScopedModel under row-level security, including the
vectors: retrieval runs under RLS (with pgvector's iterative index scan), and LangGraph's
checkpoints live in tenant tables, so a run resumed in another tenant's context finds
nothing.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.conf import settings
from django.db import models
from pgvector.django import HnswIndex, VectorField

from tenants.models import Tenant, TenantScopedModel

EMBEDDING_DIMENSIONS = 384


class EntitlementKind(models.TextChoices):
    TOOL = "tool", "Tool"
    MODEL = "model", "Model"
    PROMPT = "prompt", "Prompt"
    DATA_SOURCE = "data_source", "Data source"


class PlanEntitlement(models.Model):
    """What a plan includes by default (platform data: one row per plan and item).

    Not a TenantScopedModel: it is the platform's catalogue, shared by every tenant of a
    plan, and holds no customer data. A tenant's own choices live in TenantEntitlement."""

    # Read by all, written only in a verified platform context (EnablePlatformRLS).
    rls_platform: ClassVar[str] = "all"

    plan = models.CharField(max_length=20, choices=Tenant.Plan.choices)
    kind = models.CharField(max_length=20, choices=EntitlementKind.choices)
    name = models.CharField(max_length=100)
    config = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["plan", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "kind", "name"], name="plan_entitlement_key")
        ]

    def __str__(self) -> str:
        return f"{self.plan}: {self.kind} {self.name}"


class EntitlementOverride(models.Model):
    """An operator's exception to one tenant's plan: a tool, or a model (provider and, when
    given, model id), that the tenant's own grants may then use although its plan does not
    include it. Made by platform staff in the support admin, with a reason, and recorded in
    the tenant's audit log (agents.entitlements.grant_override).

    A platform row about one tenant: written only in a verified platform context, read by the
    platform and by that tenant alone (EnablePlatformRLS(tenant_read=True)). Not a
    TenantScopedModel: the tenant reads it but can never write it."""

    rls_platform: ClassVar[str] = "tenant_read"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(
        max_length=20,
        choices=[(EntitlementKind.TOOL, "Tool"), (EntitlementKind.MODEL, "Model")],
    )
    name = models.CharField(max_length=100)
    # Models: {"provider": ..., "model": ...}; without "model", any model of the provider.
    config = models.JSONField(default=dict, blank=True)
    reason = models.TextField()
    granted_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "kind", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "kind", "name"], name="entitlement_override_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} beyond the plan"


class TenantEntitlement(TenantScopedModel):
    """A tenant's narrowing (revoke) or configuration (grant, with config) of what its plan
    allows. A grant beyond the plan (and the operator's overrides) has no effect: it is
    refused when written and ignored when the registry is resolved."""

    class Effect(models.TextChoices):
        GRANT = "grant", "Grant"
        REVOKE = "revoke", "Revoke"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=20, choices=EntitlementKind.choices)
    name = models.CharField(max_length=100)
    effect = models.CharField(max_length=10, choices=Effect.choices, default=Effect.GRANT)
    config = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["kind", "name"]
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(
                fields=["tenant", "kind", "name"], name="tenant_entitlement_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.effect} {self.kind} {self.name}"


class Document(TenantScopedModel):
    """A playbook document. The original bytes stay in the database, under row-level
    security like everything else of the tenant (not in a shared bucket)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    source = models.BinaryField(editable=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    embedding_model = models.CharField(max_length=100, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title


class Chunk(TenantScopedModel):
    id = models.BigAutoField(primary_key=True)
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveIntegerField()
    text = models.TextField()
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    embedding_model = models.CharField(max_length=100)

    class Meta(TenantScopedModel.Meta):
        ordering = ["document", "position"]
        indexes = [
            models.Index(fields=["tenant", "document", "position"], name="chunk_tenant_doc_idx"),
            # One approximate index over all tenants' vectors; RLS filters the candidates and
            # hnsw.iterative_scan keeps scanning until k rows of this tenant are found.
            HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"


class AgentRun(TenantScopedModel):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        AWAITING_REVIEW = "awaiting_review", "Waiting for review"
        COMPLETED = "completed", "Completed"
        HALTED = "halted", "Halted: spend cap reached"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        "conversations.Conversation", on_delete=models.CASCADE, related_name="agent_runs"
    )
    trigger_message = models.ForeignKey(
        "conversations.Message", on_delete=models.CASCADE, related_name="+"
    )
    draft_message = models.ForeignKey(
        "conversations.Message", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    model_name = models.CharField(max_length=100, blank=True)
    # How well the playbook covered the question ("high", "medium", "low"), and why the agent
    # asked for the consultant (empty: it did not): shown on the draft in the review queue.
    confidence = models.CharField(max_length=10, blank=True)
    handoff_reason = models.TextField(blank=True)
    output = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"


class CheckpointRecord(TenantScopedModel):
    """A LangGraph checkpoint (serialized by LangGraph's serde), one row per checkpoint."""

    id = models.BigAutoField(primary_key=True)
    thread_id = models.CharField(max_length=100)
    checkpoint_ns = models.CharField(max_length=255, blank=True, default="")
    checkpoint_id = models.CharField(max_length=64)
    parent_checkpoint_id = models.CharField(max_length=64, blank=True, default="")
    checkpoint_type = models.CharField(max_length=32)
    checkpoint = models.BinaryField()
    metadata_type = models.CharField(max_length=32)
    metadata = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantScopedModel.Meta):
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(
                fields=["tenant", "thread_id", "checkpoint_ns", "checkpoint_id"],
                name="checkpoint_key",
            ),
        ]


class CheckpointWrite(TenantScopedModel):
    """A pending write attached to a checkpoint (LangGraph's put_writes)."""

    id = models.BigAutoField(primary_key=True)
    thread_id = models.CharField(max_length=100)
    checkpoint_ns = models.CharField(max_length=255, blank=True, default="")
    checkpoint_id = models.CharField(max_length=64)
    task_id = models.CharField(max_length=100)
    task_path = models.CharField(max_length=255, blank=True, default="")
    idx = models.IntegerField()
    channel = models.CharField(max_length=255)
    value_type = models.CharField(max_length=32)
    value = models.BinaryField()

    class Meta(TenantScopedModel.Meta):
        constraints = [
            *TenantScopedModel.Meta.constraints,
            models.UniqueConstraint(
                fields=["tenant", "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"],
                name="checkpoint_write_key",
            ),
        ]
