"""The audit log page for tenant owners and admins: filters, pages, support access first."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.roles import ADMINS, principal_role
from audit.api import AuditFilterSerializer
from audit.models import AuditEvent
from tenants.context import current_tenant_id


@require_GET
@login_required
def audit_log(request: HttpRequest) -> HttpResponse:
    if current_tenant_id() is None or principal_role(request.user) not in ADMINS:
        raise PermissionDenied("Only your organisation's owners and admins read the audit log.")
    filters = AuditFilterSerializer(data=request.GET)
    events = AuditEvent.objects.all().order_by("-seq")
    errors: dict[str, object] = {}
    if filters.is_valid():
        data = filters.validated_data
        for field in ("actor_type", "actor_id", "action", "resource_type", "resource_id"):
            if data.get(field):
                events = events.filter(**{field: data[field]})
        if data.get("support"):
            events = events.filter(actor_type=AuditEvent.ActorType.SUPPORT)
        if data.get("start"):
            events = events.filter(created_at__gte=data["start"])
        if data.get("end"):
            events = events.filter(created_at__lt=data["end"])
    else:
        errors = filters.errors
        events = events.none()
    support = AuditEvent.objects.filter(actor_type=AuditEvent.ActorType.SUPPORT)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "audit/log.html",
        {
            "page": page,
            "errors": errors,
            "filters": request.GET,
            "query": query.urlencode(),
            "actor_types": AuditEvent.ActorType.choices,
            "support_count": support.count(),
            "latest_support": support.order_by("-seq").first(),
        },
    )
