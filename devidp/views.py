"""Sign-in, authorization and logout pages of the local provider."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import authenticate
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from oauth2_provider.views import AuthorizationView, RPInitiatedLogoutView

from devidp.middleware import clear_idp_cookie, set_idp_cookie


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
