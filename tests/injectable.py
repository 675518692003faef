"""A deliberately injectable view, mounted only by tests/test_attacks.py: it runs whatever
SQL the query string holds, inside the signed-in person's request, as the runtime role."""

from __future__ import annotations

from django.db import DatabaseError, connection, transaction
from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def inject(request: HttpRequest) -> JsonResponse:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(request.GET["q"])  # the bug under test
            found = cursor.fetchall() if cursor.description else []
    except DatabaseError as exc:
        return JsonResponse({"error": str(exc).splitlines()[0]})
    return JsonResponse(
        {"rows": [[str(v) if not isinstance(v, int) else v for v in row] for row in found]}
    )


urlpatterns = [
    path("test-only/inject/", inject),
    path("", include("config.urls")),
]
