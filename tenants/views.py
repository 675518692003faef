"""The organisation's settings page (/app/settings/: name, colour, logo) and its logo."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from accounts.pages import tenant_page
from accounts.roles import ADMINS
from tenants.actions import LOGO_MAX_BYTES, LogoRejected, remove_logo, set_branding, set_logo
from tenants.branding import Brand, contrast_ratio, request_tenant
from tenants.context import current_support_session_id, current_tenant_id
from tenants.models import Tenant

ADMIN_ONLY = "Only your organisation's owners and admins change its settings."


@tenant_page(ADMINS, message=ADMIN_ONLY)
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    tenant = request_tenant(request)
    assert tenant is not None  # noqa: S101 (tenant_page guarantees a tenant)
    errors: dict[str, list[str]] = {}
    form = {"name": tenant.name, "brand_color": tenant.brand_color}
    if request.method == "POST":
        action = request.POST.get("action", "branding")
        form = {
            "name": request.POST.get("name", tenant.name),
            "brand_color": request.POST.get("brand_color", tenant.brand_color).strip(),
        }
        try:
            if action == "remove-logo":
                remove_logo(acting_user=request.user)
                messages.success(request, "The logo was removed.")
            else:
                # Name, colour and logo are saved together or not at all.
                with transaction.atomic():
                    set_branding(
                        acting_user=request.user,
                        name=form["name"],
                        brand_color=form["brand_color"],
                    )
                    logo = request.FILES.get("logo")
                    if logo is not None:
                        set_logo(acting_user=request.user, data=logo.read(LOGO_MAX_BYTES + 1))
                messages.success(request, "Settings saved.")
            return HttpResponseRedirect(reverse("app-settings"))
        except ValidationError as error:
            errors = error.message_dict
        except LogoRejected as error:
            errors = {"logo": [str(error)]}
    preview = Brand.of(form["brand_color"]) if not errors.get("brand_color") else None
    return render(
        request,
        "tenants/settings.html",
        {
            "form": form,
            "errors": errors,
            "preview": preview,
            "preview_contrast": round(contrast_ratio(preview.color, preview.ink), 1)
            if preview
            else None,
            "max_logo_mb": LOGO_MAX_BYTES // (1024 * 1024),
        },
        status=400 if errors else 200,
    )


@require_GET
def logo(request: HttpRequest) -> HttpResponse:
    """The signed-in member's organisation logo (PNG, re-encoded at upload)."""
    tenant_id = current_tenant_id()
    if (
        not request.user.is_authenticated
        or tenant_id is None
        or current_support_session_id() is not None
    ):
        raise Http404
    data = Tenant.objects.filter(id=tenant_id).values_list("logo", flat=True).first()
    if not data:
        raise Http404
    response = HttpResponse(bytes(data), content_type="image/png")
    # Versioned URL (?v=<changed at>): cache in this browser only, never in shared caches.
    response["Cache-Control"] = "private, max-age=86400"
    response["Content-Security-Policy"] = "default-src 'none'"
    return response
