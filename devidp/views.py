"""Sign-in, authorization and logout pages of the local provider."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import authenticate
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from oauth2_provider.views import AuthorizationView, RPInitiatedLogoutView

from accounts.models import Membership, User
from devidp.middleware import clear_idp_cookie, set_idp_cookie
from devidp.models import DevIdentity
from tenants.models import Tenant


class SignInForm(forms.Form):
    username = forms.CharField(widget=forms.TextInput(attrs={"autocomplete": "username"}))
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


def sign_in(request: HttpRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    form = SignInForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = authenticate(
            request,
            username=form.cleaned_data["username"],
            password=form.cleaned_data["password"],
        )
        if user is not None and hasattr(user, "dev_identity"):
            response = HttpResponseRedirect(next_url or reverse("oauth2_provider:idp-home"))
            set_idp_cookie(response, user)
            return response
        form.add_error(None, "Unknown username or wrong password.")
    return render(request, "devidp/sign_in.html", {"form": form, "next": next_url})


class SignUpForm(forms.Form):
    first_name = forms.CharField(max_length=150)
    last_name = forms.CharField(max_length=150, required=False)
    email = forms.EmailField()
    password = forms.CharField(
        min_length=8, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    organisation = forms.ModelChoiceField(
        queryset=Tenant.objects.filter(status=Tenant.Status.ACTIVE).defer("logo"),
        to_field_name="slug",
        empty_label=None,
    )
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.CLIENT)

    def clean_email(self) -> str:
        email = str(self.cleaned_data["email"]).strip().lower()
        if User.objects.filter(username=email).exists():
            raise forms.ValidationError("This provider already has an account for this address.")
        return email


@transaction.atomic
def sign_up(request: HttpRequest) -> HttpResponse:
    """Create an account in the provider's directory (what an administrator does in Cognito,
    Auth0 or Entra), with the organisation and role the provider will assert for it. Opened
    from an invitation, it comes filled in."""
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    initial = {
        "email": request.GET.get("email", ""),
        "organisation": request.GET.get("tenant", ""),
        "role": request.GET.get("role", Membership.Role.CLIENT),
    }
    form = SignUpForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        user = User(
            username=data["email"],
            email=data["email"],
            first_name=data["first_name"],
            last_name=data["last_name"],
        )
        user.set_password(data["password"])
        user.save()
        DevIdentity.objects.create(
            user=user, tenant_claim=str(data["organisation"].id), roles=[data["role"]]
        )
        response = HttpResponseRedirect(next_url or reverse("oauth2_provider:idp-home"))
        set_idp_cookie(response, user)
        return response
    return render(request, "devidp/sign_up.html", {"form": form, "next": next_url})


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "devidp/home.html", {"idp_user": request.user})


class DevAuthorizationView(AuthorizationView):
    login_url = "/idp/login/"


class DevLogoutView(RPInitiatedLogoutView):
    """RP-initiated logout: also forget the provider's own sign-in."""

    def do_logout(self, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().do_logout(*args, **kwargs)
        clear_idp_cookie(response)
        return response
