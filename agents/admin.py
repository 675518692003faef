"""The support admin's page for operator overrides: a tool or model beyond one tenant's plan.

The plan is a ceiling for a tenant's own grants (agents.entitlements); only platform staff go
past it, here, with a reason that the tenant's admins read in their audit log. Overrides are
granted or removed (each with its reason), never edited in place.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from accounts import support
from accounts.admin import support_admin_site
from accounts.models import User
from agents.entitlements import (
    MIN_OVERRIDE_REASON_LENGTH,
    MODEL_PROVIDERS,
    grant_override,
    override_errors,
    remove_override,
)
from agents.models import EntitlementKind, EntitlementOverride
from agents.tools import TOOLS

REASON_HELP = (
    "Why this tenant may go beyond its plan. The tenant's admins read it in their audit log."
)


class OverrideForm(forms.ModelForm):
    provider = forms.ChoiceField(
        choices=[("", "—"), *((p, p) for p in MODEL_PROVIDERS)],
        required=False,
        help_text="Models only.",
    )
    model = forms.CharField(
        max_length=100,
        required=False,
        help_text="Models only: the provider's model id; empty allows every model of the provider.",
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        min_length=MIN_OVERRIDE_REASON_LENGTH,
        help_text=REASON_HELP,
    )

    class Meta:
        model = EntitlementOverride
        fields = ["tenant", "kind", "name"]
        help_texts = {
            "name": f"A tool ({', '.join(sorted(TOOLS))}) or a name for the model.",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        config = {"provider": data.get("provider")} if data.get("kind") == "model" else {}
        for field, message in override_errors(
            data.get("kind"), (data.get("name") or "").strip(), config, data.get("reason") or ""
        ).items():
            if field not in self.errors:
                self.add_error(field, message)
        return data


class RemoveOverrideForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        min_length=MIN_OVERRIDE_REASON_LENGTH,
        help_text=REASON_HELP,
    )


@admin.register(EntitlementOverride, site=support_admin_site)
class EntitlementOverrideAdmin(admin.ModelAdmin):
    form = OverrideForm
    list_display = ["tenant", "kind", "name", "allows", "reason", "granted_by", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "tenant__name", "tenant__slug"]

    @admin.display(description="Allows")
    def allows(self, override: EntitlementOverride) -> str:
        if override.kind == EntitlementKind.TOOL:
            return f"tool {override.name}"
        model = override.config.get("model") or "any model"
        return f"{override.config.get('provider')}: {model}"

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        return [*self.list_display, "remove_link"]

    @admin.display(description="")
    def remove_link(self, override: EntitlementOverride) -> str:
        url = reverse("admin:agents_entitlementoverride_remove", args=[override.pk])
        return format_html('<a href="{}">Remove…</a>', url)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<uuid:object_id>/remove/",
                self.admin_site.admin_view(self.remove_view),
                name="agents_entitlementoverride_remove",
            ),
            *super().get_urls(),
        ]

    # Platform staff only; an override is granted or removed (with a reason), not edited.
    def has_module_permission(self, request: HttpRequest) -> bool:
        return support.is_support_staff(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return support.is_support_staff(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return support.is_support_staff(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # through remove_view, which asks for the reason

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # The form checked everything (OverrideForm.clean and the unique constraint).
        data = form.cleaned_data
        created = grant_override(
            staff=request.user,  # type: ignore[arg-type]
            tenant=data["tenant"],
            kind=data["kind"],
            name=data["name"],
            reason=data["reason"],
            provider=data.get("provider") or "",
            model=data.get("model") or "",
        )
        obj.pk, obj.created_at = created.pk, created.created_at

    def remove_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        override = EntitlementOverride.objects.select_related("tenant").filter(id=object_id).first()
        if override is None or not support.is_support_staff(request.user):
            raise Http404
        form = RemoveOverrideForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            staff: User = request.user  # type: ignore[assignment]
            remove_override(staff=staff, override=override, reason=form.cleaned_data["reason"])
            messages.success(
                request,
                f"The override for {override.kind} {override.name} on {override.tenant.name} "
                "was removed; it is in their audit log.",
            )
            return HttpResponseRedirect(reverse("admin:agents_entitlementoverride_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Remove the override for {override.kind} {override.name}",
            "override": override,
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/agents/override_remove.html", context)
