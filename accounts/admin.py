"""The support admin: platform staff only, TOTP required, tenant data only in a support session.

- Every page needs a verified TOTP device (django-otp's OTPAdminSite), superusers included.
  Staff without a device enrol at /admin/enroll/ (password, then scan, then one code), then
  generate single-use backup codes there (accounts/backup_codes.py), which the login's OTP
  step accepts in place of the app's code ("Backup codes" device).
- Repeated failures at the login (password, app code or backup code) lock that username out
  from that address for a while (accounts/lockouts.py); staff list and clear lockouts at
  /admin/lockouts/.
- Without an open support session the tenant tables show zero rows: the admin reads them
  through the `all_tenants` manager, and row-level security admits nothing.
- With a session, the database admits exactly that tenant's rows until the session ends or
  expires, and every list, view, change and delete is written to that tenant's audit log
  with the staff member and the reason.
"""

from __future__ import annotations

import base64
import io
import math
import uuid
from typing import Any

import qrcode
import qrcode.image.svg
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import login
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django_otp import login as otp_login
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import backup_codes, lockouts, support
from accounts.models import ApiKey, Membership, SupportSession, User
from accounts.queries import user_by_id
from audit.actions import record_audit_event
from audit.models import AuditEvent
from conversations.models import Conversation, Message
from tenants.context import (
    Principal,
    TenantContextRefused,
    current_support_session_id,
    platform_context,
    tenant_context,
)
from tenants.models import Credential, Tenant


def _has_confirmed_device(staff: User) -> bool:
    with platform_context(staff.pk):
        return TOTPDevice.objects.filter(user=staff, confirmed=True).exists()


class SupportLoginForm(OTPAdminAuthenticationForm):
    """django-otp's admin login; a backup code is digested before its device compares it
    (the database holds digests only) and every use or refusal is logged. The second factor
    is read in a platform context for the account whose password was just checked: the
    devices are platform rows (accounts migration 0008). A refused code counts towards the
    login lockout like a wrong password (accounts.lockouts)."""

    def clean_otp(self, user: Any) -> None:
        if user is None:
            return
        try:
            with platform_context(user.pk):
                super().clean_otp(user)
        except TenantContextRefused:  # not (or no longer) active platform staff
            raise self.get_invalid_login_error() from None

    def _verify_token(self, user: User, token: str, device: Device | None = None) -> Device:
        try:
            if not isinstance(device, StaticDevice):
                return super()._verify_token(user, token, device)
            try:
                verified = super()._verify_token(
                    user, backup_codes.backup_code_digest(token), device
                )
            except ValidationError:
                backup_codes.record_backup_code_refused(user)
                raise
        except ValidationError as exc:
            if exc.code != "device_required":  # a code was typed and refused: a guess
                lockouts.second_factor_failed(self.request, user.get_username())
            raise
        left = backup_codes.record_backup_code_used(user)
        if left < backup_codes.LOW_WATER:
            messages.warning(
                self.request,
                f"{left} backup code{'s' if left != 1 else ''} left: generate a new set with "
                "the Backup codes link at the top.",
            )
        return verified


class SupportAdminSite(OTPAdminSite):
    site_header = "Playbook support"
    site_title = "Playbook support"
    index_title = "Support"
    login_form = SupportLoginForm

    def has_permission(self, request: HttpRequest) -> bool:
        # Staff of the platform only (never a tenant's user), with a verified second factor.
        return support.is_support_staff(request.user) and super().has_permission(request)

    def get_urls(self) -> list[Any]:
        custom: list[URLPattern] = [
            path("enroll/", self.enroll_view, name="otp_enroll"),
            path("support/open/", self.admin_view(self.open_session_view), name="support_open"),
            path("support/end/", self.admin_view(self.end_session_view), name="support_end"),
            path("lockouts/", self.admin_view(self.lockouts_view), name="lockouts"),
        ]
        return custom + super().get_urls()

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["support_session"] = support.active_support_session(request)
        return context

    # ---------------------------------------------------------------- support sessions

    def open_session_view(self, request: HttpRequest) -> HttpResponse:
        form = OpenSupportSessionForm(request.POST or None, initial=request.GET or None)
        if request.method == "POST" and form.is_valid():
            try:
                session = support.open_support_session(
                    staff=request.user,  # type: ignore[arg-type]
                    tenant=form.cleaned_data["tenant"],
                    reason=form.cleaned_data["reason"],
                    minutes=form.cleaned_data["minutes"],
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                # One session at a time: the one it replaces ends now, not at its expiry.
                self._end_active_session(request)
                support.remember_support_session(request, session)
                messages.success(
                    request,
                    f"Support session open on {form.cleaned_data['tenant'].name} until "
                    f"{timezone.localtime(session.expires_at):%H:%M %Z}. It is in their audit log.",
                )
                return HttpResponseRedirect(reverse("admin:index"))
        context = {**self.each_context(request), "form": form, "title": "Open a support session"}
        return TemplateResponse(request, "admin/support_open.html", context)

    def end_session_view(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and self._end_active_session(request):
            messages.success(request, "Support session ended.")
        return HttpResponseRedirect(reverse("admin:index"))

    def _end_active_session(self, request: HttpRequest) -> bool:
        data = support.active_support_session(request)
        if data is None:
            return False
        support.end_support_session(
            staff=request.user,  # type: ignore[arg-type]
            session_id=uuid.UUID(data["id"]),
            tenant_id=uuid.UUID(data["tenant_id"]),
        )
        support.forget_support_session(request)
        return True

    # ---------------------------------------------------------------- login lockouts

    def lockouts_view(self, request: HttpRequest) -> HttpResponse:
        """The support admin's login lockouts in force (accounts.lockouts); clearing one lets
        that username sign in from that address again at once."""
        if request.method == "POST":
            cleared = lockouts.clear_lockout(request.POST.get("lockout", ""), staff=request.user)
            if cleared is None:
                messages.info(request, "That lockout had already ended.")
            else:
                messages.success(
                    request,
                    f"Cleared the lockout of {cleared.username} from {cleared.ip_address}.",
                )
            return HttpResponseRedirect(reverse("admin:lockouts"))
        context = {
            **self.each_context(request),
            "title": "Login lockouts",
            "lockouts": lockouts.current_lockouts(),
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "lockout_minutes": math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60),
        }
        return TemplateResponse(request, "admin/lockouts.html", context)

    # ---------------------------------------------------------------- TOTP enrolment

    def enroll_view(self, request: HttpRequest) -> HttpResponse:
        if self.has_permission(request):
            # Enrolled and verified: the page offers backup codes.
            return self.backup_codes_view(request)
        user_id = request.session.get("otp_enroll_user")
        user = user_by_id(user_id) if user_id else None
        # The devices are platform rows: read and written in this staff member's context.
        if user is not None and support.is_support_staff(user):
            with platform_context(user.pk):
                return self.enroll_device(request, user)
        form = AuthenticationForm(request, data=request.POST or None)
        if request.method == "POST" and form.is_valid():
            candidate = form.get_user()
            if not support.is_support_staff(candidate):
                form.add_error(None, "Only platform staff use the support admin.")
            elif _has_confirmed_device(candidate):
                messages.info(request, "You are already enrolled: log in with your code.")
                return HttpResponseRedirect(reverse("admin:login"))
            else:
                request.session["otp_enroll_user"] = candidate.pk
                return HttpResponseRedirect(reverse("admin:otp_enroll"))
        return render(
            request,
            "admin/otp_enroll.html",
            {"step": "password", "form": form, "site_header": self.site_header},
        )

    def enroll_device(self, request: HttpRequest, user: User) -> HttpResponse:
        device, _ = TOTPDevice.objects.get_or_create(
            user=user, confirmed=False, defaults={"name": "Authenticator app"}
        )
        device.user = user  # the account was read by a signed lookup, not through this FK
        token_form = TokenForm(request.POST or None)
        if request.method == "POST" and token_form.is_valid():
            if device.verify_token(token_form.cleaned_data["token"]):
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                del request.session["otp_enroll_user"]
                login(request, user, backend="accounts.backends.AccountLookupBackend")
                otp_login(request, device)
                messages.success(
                    request,
                    "Two-factor authentication is set up. Now keep a set of backup codes.",
                )
                return HttpResponseRedirect(reverse("admin:otp_enroll"))
            token_form.add_error("token", "That code is not valid; try the current one.")
        return render(
            request,
            "admin/otp_enroll.html",
            {
                "step": "scan",
                "form": token_form,
                "qr_svg": qr_svg(device.config_url),
                "secret": base64.b32encode(device.bin_key).decode().rstrip("="),
                "site_header": self.site_header,
            },
        )

    def backup_codes_view(self, request: HttpRequest) -> HttpResponse:
        """Generate a set of backup codes (replacing any earlier set) and show it, once."""
        staff: User = request.user  # type: ignore[assignment]
        codes: list[str] = []
        if request.method == "POST":
            codes = backup_codes.regenerate_backup_codes(staff=staff)
        context = {
            **self.each_context(request),
            "title": "Backup codes",
            "codes": codes,
            "remaining": backup_codes.remaining_backup_codes(staff),
            "codes_per_set": backup_codes.CODES_PER_SET,
        }
        response = TemplateResponse(request, "admin/backup_codes.html", context)
        add_never_cache_headers(response)  # the codes must not be kept by any cache
        return response


def qr_svg(data: str) -> str:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    buffer = io.BytesIO()
    image.save(buffer)
    return buffer.getvalue().decode()


class TokenForm(forms.Form):
    token = forms.CharField(
        label="Code from your authenticator app",
        min_length=6,
        max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


class OpenSupportSessionForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.all())
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        min_length=support.MIN_REASON_LENGTH,
        help_text="The tenant's admins read this in their audit log and support sessions list.",
    )
    minutes = forms.IntegerField(min_value=1, initial=60)


support_admin_site = SupportAdminSite(name="admin")


class StaffTOTPDeviceAdmin(TOTPDeviceAdmin):
    """Superusers can remove a lost device so its owner can enrol again."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    has_view_permission = has_change_permission = has_delete_permission = (
        lambda self, request, obj=None: bool(request.user.is_superuser)
    )


support_admin_site.register(TOTPDevice, StaffTOTPDeviceAdmin)


# --------------------------------------------------------------------------- platform models


@admin.register(Tenant, site=support_admin_site)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "plan", "region", "status", "created_at"]
    search_fields = ["name", "slug"]
    list_filter = ["plan", "status", "region"]
    readonly_fields = ["id", "created_at", "updated_at"]

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        with platform_context(int(request.user.pk or 0)):
            super().save_model(request, obj, form, change)
        # A platform change to a tenant is written to that tenant's own log.
        with tenant_context(obj, principal=Principal.staff(int(request.user.pk or 0))):
            record_audit_event(
                "tenant.updated" if change else "tenant.created",
                actor=request.user,
                resource_type="tenant",
                resource_id=obj.pk,
                context={"fields": sorted(form.changed_data)},
            )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return support.is_support_staff(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return support.is_support_staff(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a tenant's data is kept; closing a tenant is a status


@admin.register(User, site=support_admin_site)
class StaffUserAdmin(admin.ModelAdmin):
    """Platform staff accounts only: tenants' people are seen through Memberships, in a
    support session."""

    list_display = ["username", "email", "is_superuser", "is_active", "last_login"]
    fields = [
        "username",
        "email",
        "first_name",
        "last_name",
        "is_active",
        "is_staff",
        "is_superuser",
        "last_login",
        "date_joined",
    ]
    readonly_fields = ["last_login", "date_joined"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return super().get_queryset(request).filter(tenant__isnull=True)


# --------------------------------------------------------------------------- tenant data


class SupportAuditedAdmin(admin.ModelAdmin):
    """Tenant data, read through row-level security and audited in the tenant's log."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # No ORM tenant filter here on purpose: the database decides. Without a valid
        # support session it admits zero rows.
        return self.model.all_tenants.all()

    def has_module_permission(self, request: HttpRequest) -> bool:
        return support.is_support_staff(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return support.is_support_staff(request.user)

    # Records support may look at but never edit (keys, the log itself, credentials).
    read_only = False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            not self.read_only
            and support.is_support_staff(request.user)
            and current_support_session_id() is not None
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _audit(
        self, request: HttpRequest, action: str, object_id: str = "", **context: Any
    ) -> None:
        if not support.support_session_admits_rows():
            # No session, or one that ended or expired: nothing of any tenant is visible, so
            # nothing to record (and the database would refuse the audit row).
            return
        record_audit_event(
            action,
            actor=request.user,
            resource_type=self.model._meta.label_lower,
            resource_id=object_id,
            context=context,
        )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not support.support_session_admits_rows():
            messages.info(request, "Open a support session to see a tenant's data.")
        self._audit(request, "support.viewed", view="list", query=request.GET.urlencode())
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if request.method == "GET":
            self._audit(request, "support.viewed", object_id, view="detail")
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        self._audit(request, "support.changed", str(obj.pk), fields=sorted(form.changed_data))


@admin.register(Membership, site=support_admin_site)
class MembershipAdmin(SupportAuditedAdmin):
    list_display = ["user", "role", "created_at"]
    list_filter = ["role"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["user", "created_at"]


@admin.register(Conversation, site=support_admin_site)
class ConversationAdmin(SupportAuditedAdmin):
    list_display = ["title", "client", "status", "updated_at"]
    list_filter = ["status"]
    search_fields = ["title"]
    fields = ["title", "client", "status", "created_at", "updated_at"]
    readonly_fields = ["client", "created_at", "updated_at"]


@admin.register(Message, site=support_admin_site)
class MessageAdmin(SupportAuditedAdmin):
    list_display = ["conversation", "sender", "created_at"]
    list_filter = ["sender"]
    fields = ["conversation", "sender", "author", "body", "created_at"]
    readonly_fields = ["conversation", "sender", "author", "body", "created_at"]


@admin.register(ApiKey, site=support_admin_site)
class ApiKeyAdmin(SupportAuditedAdmin):
    list_display = ["name", "prefix", "scope", "created_at", "expires_at", "revoked_at"]
    fields = ("name", "prefix", "scope", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = fields  # the hash is never shown
    read_only = True


@admin.register(AuditEvent, site=support_admin_site)
class AuditEventAdmin(SupportAuditedAdmin):
    list_display = [
        "created_at",
        "actor_type",
        "actor_label",
        "action",
        "resource_type",
        "resource_id",
    ]
    list_filter = ["actor_type", "action"]
    read_only = True


@admin.register(SupportSession, site=support_admin_site)
class SupportSessionAdmin(SupportAuditedAdmin):
    list_display = ["staff_username", "created_at", "expires_at", "ended_at"]
    fields = ("staff_username", "reason", "created_at", "expires_at", "ended_at")
    readonly_fields = fields
    read_only = True


@admin.register(Credential, site=support_admin_site)
class CredentialAdmin(SupportAuditedAdmin):
    """Names and metadata only: the ciphertext, nonce and secret are never shown."""

    list_display = ["name", "kind", "last_four", "created_at", "last_used_at", "rotated_at"]
    fields = ("name", "kind", "metadata", "last_four", "created_at", "last_used_at", "rotated_at")
    readonly_fields = fields
    read_only = True
