"""The Celery app. Tasks default to `tenants.celery.TenantTask` (tenant required)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("playbook", task_cls="tenants.celery:TenantTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def refuse_unsafe_database_role(**kwargs: Any) -> None:
    from tenants.checks import assert_tenant_boundary

    assert_tenant_boundary()
