"""The Celery app. Tasks default to `tenants.celery.TenantTask` (tenant required)."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("playbook", task_cls="tenants.celery:TenantTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger(__name__)


@signals.worker_init.connect
def refuse_unsafe_database_role(**kwargs: Any) -> None:
    """A worker whose database role could bypass row-level security exits with status 1."""
    from tenants.checks import assert_tenant_boundary

    try:
        assert_tenant_boundary()
    except ImproperlyConfigured as refusal:
        # Celery's Signal.send logs any Exception a handler raises and goes on, so the worker
        # would start anyway. SystemExit is not an Exception: it ends WorkController.__init__
        # and the process, after the refusal is in the log.
        logger.critical("%s", refusal)
        raise SystemExit(1) from None


@signals.worker_process_init.connect
def trace_worker_process(**kwargs: Any) -> None:
    """Tracing in each pool process (a parent's exporter thread does not survive the fork)."""
    from config.telemetry import setup_tracing

    setup_tracing()


@signals.worker_init.connect
def trace_worker(sender: Any = None, **kwargs: Any) -> None:
    """Solo and thread pools run tasks in the worker process itself (no worker_process_init)."""
    if "prefork" in str(getattr(sender, "pool_cls", "")).lower():
        return
    from config.telemetry import setup_tracing

    setup_tracing()


@signals.setup_logging.connect
def keep_django_logging(**kwargs: Any) -> None:
    """Workers log through settings.LOGGING (JSON with tenant and run ids in production)
    instead of Celery's own handlers."""
