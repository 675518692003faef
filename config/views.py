"""Front page, error pages and health endpoints."""

from __future__ import annotations

import json
import sys

from django.core.cache import caches
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.roles import CLIENT, TEAM
from config.api_errors import (
    NOT_FOUND_MESSAGE,
    database_unavailable,
    error_body,
    redis_unavailable,
)
from tenants.branding import request_role
from tenants.checks import runtime_role_problems
from tenants.inputs import BadInput
from tenants.vault.backends import CredentialStoreUnavailable


@never_cache
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Signed-in members go to their place: the team to the dashboard, clients to the chat."""
    if request.user.is_authenticated:
        role = request_role(request)
        if role in TEAM:
            return HttpResponseRedirect(reverse("app-queue"))
        if role == CLIENT:
            return HttpResponseRedirect(reverse("chat"))
    return render(request, "home.html")


# --------------------------------------------------------------------------- error pages
# Pages for people, JSON for the API (its views answer errors themselves; these cover URLs
# that match no view and errors raised outside one).


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


def _error_page(
    request: HttpRequest, status: int, code: str, message: str, template: str
) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body(code, message), status=status)
    return render(request, template, {"message": message}, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if isinstance(exception, BadInput):  # tenants.inputs: a stable code and a clear message
        response = _error_page(
            request, exception.status, exception.code, exception.message, "400.html"
        )
        if not _is_api(request) and request.headers.get("HX-Request") == "true":
            # Not the error page into the fragment: the form stays as typed, and the page's
            # toast says what to change.
            toast = {"message": f"{exception.message} Nothing was saved.", "kind": "error"}
            response["HX-Trigger"] = json.dumps({"toast": toast})
            response["HX-Reswap"] = "none"
        return response
    return _error_page(request, 400, "bad_request", "The request could not be read.", "400.html")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception) if exception and str(exception) else ""
    return _error_page(
        request,
        403,
        "permission_denied",
        message or "You do not have permission to open this page.",
        "403.html",
    )


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # One page for "does not exist" and "belongs to another organisation" (invariant 7).
    return _error_page(request, 404, "not_found", NOT_FOUND_MESSAGE, "404.html")


# Seconds a client is told to wait when the database is unreachable (a restart, a failover).
DATABASE_RETRY_AFTER = 5


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls this while handling the exception, so it is still the current one.
    exc = sys.exc_info()[1]
    if database_unavailable(exc) or redis_unavailable(exc):
        # Nothing was saved: the request's transaction never committed. (Redis holds the
        # sessions: without it nobody can be recognised.)
        if _is_api(request):
            response: HttpResponse = JsonResponse(
                error_body(
                    "service_unavailable",
                    "Playbook is briefly unavailable; nothing was saved. Try again in a moment.",
                ),
                status=503,
            )
        else:
            response = HttpResponse(loader.get_template("503.html").render({}), status=503)
        response["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response
    if isinstance(exc, CredentialStoreUnavailable):
        # A page or endpoint that needed a credential and does not say so itself: the
        # request's transaction rolled back; everything else keeps working.
        message = CredentialStoreUnavailable.user_message
        if _is_api(request):
            response = JsonResponse(
                error_body(CredentialStoreUnavailable.code, message), status=503
            )
        else:
            response = HttpResponse(
                loader.get_template("503.html").render({"message": message}), status=503
            )
        response["Retry-After"] = str(CredentialStoreUnavailable.retry_after)
        return response
    if _is_api(request):
        return JsonResponse(
            error_body("server_error", "Something went wrong on our side; nothing was saved."),
            status=500,
        )
    # No request context: the database may be what failed, so nothing here may query it.
    return HttpResponse(loader.get_template("500.html").render({}), status=500)


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
    """The cache's Redis and the sessions' (SESSION_REDIS_URL, often the same server)."""
    for alias in ("default", "sessions"):
        try:
            caches[alias].set("readyz", "1", timeout=5)
            if caches[alias].get("readyz") != "1":
                return f"unavailable ({alias})"
        except Exception as exc:
            return f"unavailable ({alias}: {type(exc).__name__})"
    return "ok"


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
