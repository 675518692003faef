"""A client's conversations with her consultant's agent."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from pgvector.django import VectorField

from agents.models import EMBEDDING_DIMENSIONS
from tenants.models import TenantScopedModel


class Conversation(TenantScopedModel):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="conversations"
    )
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["tenant", "-updated_at"], name="conv_tenant_updated_idx"),
            models.Index(fields=["tenant", "client"], name="conv_tenant_client_idx"),
        ]

    def __str__(self) -> str:
        return self.title


class Message(TenantScopedModel):
    class Sender(models.TextChoices):
        CLIENT = "client", "Client"
        AGENT = "agent", "Agent"
        CONSULTANT = "consultant", "Consultant"

    class Status(models.TextChoices):
        SENT = "sent", "Sent"
        DRAFT = "draft", "Draft, waiting for review"
        REJECTED = "rejected", "Rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    sender = models.CharField(max_length=20, choices=Sender.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The person who wrote it; empty for the agent.",
    )
    body = models.TextField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.SENT)
    # Playbook passages the answer is based on: [{"document", "title", "chunk", "quote"}].
    citations = models.JSONField(default=list, blank=True)
    original_draft = models.TextField(blank=True, help_text="The agent's draft, if edited.")
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["created_at"]
        indexes = [
            models.Index(
                fields=["tenant", "conversation", "created_at"], name="msg_tenant_conv_idx"
            ),
            models.Index(fields=["tenant", "status", "-created_at"], name="msg_tenant_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.sender}: {self.body[:40]}"


class Correction(TenantScopedModel):
    """A consultant's correction of an AI draft: retrieved as a few-shot example for similar
    later questions, so the agent answers the way she would."""

    class Kind(models.TextChoices):
        EDIT = "edit", "Edited the draft"
        OVERRIDE = "override", "Wrote her own answer"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="corrections")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    question = models.TextField()
    draft = models.TextField()
    final = models.TextField()
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    embedding_model = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantScopedModel.Meta):
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.question[:40]}"
