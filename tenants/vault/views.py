"""Credentials page for tenant owners and admins: add (write-only), rotate, delete."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from accounts.pages import tenant_page
from accounts.roles import ADMINS
from tenants.models import Credential
from tenants.vault import service
from tenants.vault.backends import CredentialStoreUnavailable


class CredentialForm(forms.Form):
    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=Credential.Kind.choices)
    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        max_length=8192,
        help_text="Stored encrypted; never shown again.",
    )
    base_url = forms.URLField(required=False, label="Base URL (optional)", assume_scheme="https")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if Credential.objects.filter(name=name).exists():
            raise forms.ValidationError("A credential with this name exists; rotate it instead.")
        return name


class RotateForm(forms.Form):
    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        max_length=8192,
    )


ADMIN_ONLY = "Only your organisation's owners and admins manage credentials."


@tenant_page(ADMINS, message=ADMIN_ONLY)
@require_http_methods(["GET", "POST"])
def credentials_page(request: HttpRequest) -> HttpResponse:
    form = CredentialForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        metadata = (
            {"base_url": form.cleaned_data["base_url"]} if form.cleaned_data["base_url"] else {}
        )
        try:
            service.create_credential(
                acting_user=request.user,
                name=form.cleaned_data["name"],
                kind=form.cleaned_data["kind"],
                secret=form.cleaned_data["secret"],
                metadata=metadata,
            )
        except CredentialStoreUnavailable:
            # The action's transaction rolled back: no credential, no data key.
            form.add_error(None, CredentialStoreUnavailable.user_message)
            status = 503
        else:
            messages.success(request, f"Credential {form.cleaned_data['name']} saved.")
            return HttpResponseRedirect(reverse("credentials"))
    response = render(
        request,
        "vault/credentials.html",
        {"form": form, "credentials": Credential.objects.defer("ciphertext", "nonce")},
        status=status,
    )
    if status == 503:
        response["Retry-After"] = str(CredentialStoreUnavailable.retry_after)
    return response


@tenant_page(ADMINS, message=ADMIN_ONLY)
@require_http_methods(["POST"])
def credential_action(request: HttpRequest, credential_id: str, action: str) -> HttpResponse:
    credential = Credential.objects.filter(id=credential_id).first() if credential_id else None
    if credential is None:
        raise Http404
    if action == "delete":
        service.delete_credential(acting_user=request.user, credential=credential)
        messages.success(request, f"Credential {credential.name} deleted.")
    elif action == "rotate":
        form = RotateForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Enter the new secret to rotate.")
        else:
            try:
                service.rotate_credential(
                    acting_user=request.user,
                    credential=credential,
                    secret=form.cleaned_data["secret"],
                )
            except CredentialStoreUnavailable:
                messages.error(request, CredentialStoreUnavailable.user_message)
            else:
                messages.success(request, f"Credential {credential.name} rotated.")
    else:
        raise Http404
    return HttpResponseRedirect(reverse("credentials"))
