"""The unprotected copy of conversations_conversation that bench/machinery.py creates
(`bench_machinery_conversations`: same rows and indexes, no row-level security). Unmanaged:
only the benchmark's server (bench/settings.py) installs this app."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class PlainConversation(models.Model):
    # Not a TenantScopedModel on purpose: it is the benchmark's unprotected baseline (the same
    # rows without row-level security), holds only the synthetic rows bench/machinery.py
    # generates, and exists only in the benchmark's scratch database; the product's
    # INSTALLED_APPS never include this app.
    id = models.UUIDField(primary_key=True)
    tenant_id = models.UUIDField()
    client = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        app_label = "bench"
        managed = False
        db_table = "bench_machinery_conversations"
        ordering = ["-updated_at"]  # as Conversation

    def __str__(self) -> str:
        return self.title
