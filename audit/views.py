"""The audit log page for tenant owners and admins: filters, pages, support access first."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.pages import paginate, tenant_page
from accounts.roles import ADMINS
from audit.api import AuditFilterSerializer
from audit.models import AuditEvent


@tenant_page(ADMINS, message="Only your organisation's owners and admins read the audit log.")
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
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
    page, query = paginate(request, events, 50)
    return render(
        request,
        "audit/log.html",
        {
            "page": page,
            "errors": errors,
            "filters": request.GET,
            "query": query,
            "actor_types": AuditEvent.ActorType.choices,
            "support_count": support.count(),
            "latest_support": support.order_by("-seq").first(),
        },
    )
