"""Front page and health endpoints."""

from __future__ import annotations

from django.core.cache import cache
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.models import User, role_in_current_tenant


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    context = {
        "tenant": getattr(user, "tenant", None) if user.is_authenticated else None,
        "role": role_in_current_tenant(user) if isinstance(user, User) else None,
    }
    return render(request, "home.html", context)


@transaction.non_atomic_requests
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up. No dependencies checked."""
    return JsonResponse({"status": "ok"})


@transaction.non_atomic_requests
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready for traffic: database (as the runtime role), migrations applied, Redis."""
    checks: dict[str, str] = {}
    try:
        connection = connections["default"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not pending else f"{len(pending)} pending"
    except Exception as exc:
        checks["database"] = f"unavailable ({type(exc).__name__})"
    try:
        cache.set("readyz", "1", timeout=5)
        checks["redis"] = "ok" if cache.get("readyz") == "1" else "unavailable"
    except Exception as exc:
        checks["redis"] = f"unavailable ({type(exc).__name__})"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
