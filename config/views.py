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
from tenants.checks import runtime_role_problems


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


# Once the process has seen every migration applied it stays so (a deploy with new
# migrations starts new processes): the migration graph is not reloaded on every probe.
_migrations_applied = False


def _database_checks() -> dict[str, str]:
    """The runtime connection works, its role cannot leak tenants, migrations are applied."""
    global _migrations_applied
    connection = connections["default"]
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        return {
            "database": f"unavailable ({type(exc).__name__})",
            "database_role": "not checked",
            "migrations": "not checked",
        }
    try:
        problems = runtime_role_problems(connection)
        checks["database_role"] = (
            "ok" if not problems else "unsafe (" + ", ".join(str(p.id) for p in problems) + ")"
        )
    except Exception as exc:
        checks["database_role"] = f"unavailable ({type(exc).__name__})"
    if _migrations_applied:
        checks["migrations"] = "ok"
    else:
        try:
            executor = MigrationExecutor(connection)
            pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
            checks["migrations"] = f"{len(pending)} pending" if pending else "ok"
            _migrations_applied = not pending
        except Exception as exc:
            checks["migrations"] = f"unavailable ({type(exc).__name__})"
    return checks


def _redis_check() -> str:
    try:
        cache.set("readyz", "1", timeout=5)
        return "ok" if cache.get("readyz") == "1" else "unavailable"
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"


@transaction.non_atomic_requests
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready for traffic: the database as the runtime role, that role is safe (not a
    superuser, no BYPASSRLS), every migration applied, Redis. 503 names what failed."""
    checks = {**_database_checks(), "redis": _redis_check()}
    failing = [name for name, value in checks.items() if value != "ok"]
    body: dict[str, object] = {"status": "unavailable" if failing else "ok", "checks": checks}
    if failing:
        body["failing"] = failing
    return JsonResponse(body, status=503 if failing else 200)
