"""The team page (/app/team/: members, roles, invitations), the invitation link people open
(/invite/<token>/), and the support sessions page (/app/support/)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import actions
from accounts.models import Invitation, Membership, SupportSession, User
from accounts.pages import tenant_page
from accounts.queries import open_invitation_tenant
from accounts.roles import ADMINS, TEAM
from accounts.support import end_support_session_for_tenant
from tenants.branding import request_role
from tenants.context import current_tenant_id, tenant_context
from tenants.models import Tenant

ROLE_HELP = {
    "owner": "Everything, including other owners.",
    "admin": "Settings, credentials, usage, audit log and the team (not owners).",
    "consultant": "Reviews the queue and edits the playbook.",
    "client": "Chats with the assistant; sees only her own conversations.",
}


def _errors(error: ValidationError) -> list[str]:
    return list(error.messages)


def _team_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    role = request_role(request)
    memberships = Membership.objects.select_related("user").order_by(
        "role", "user__first_name", "user__last_name", "user__email"
    )
    manageable = actions.MANAGEABLE_ROLES.get(role or "", frozenset())
    invitations = Invitation.objects.select_related("invited_by").filter(
        accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    )
    return {
        "members": [
            {
                "membership": m,
                "user": m.user,
                "is_me": m.user_id == request.user.pk,
                "can_manage": m.role in manageable and m.user_id != request.user.pk,
            }
            for m in memberships
        ],
        "invitations": [{"invitation": i, "can_manage": i.role in manageable} for i in invitations],
        "invitable_roles": [
            (value, label, ROLE_HELP[value])
            for value, label in Membership.Role.choices
            if value in manageable
        ],
        "assignable_roles": [(v, label) for v, label in Membership.Role.choices if v in manageable],
        "send_email": settings.SEND_EMAIL,
        "clients": sum(1 for m in memberships if m.role == Membership.Role.CLIENT),
        **extra,
    }


@tenant_page(TEAM)
@require_GET
def team_page(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/team.html", _team_context(request))


@tenant_page(TEAM)
@require_POST
def team_invite(request: HttpRequest) -> HttpResponse:
    email = request.POST.get("email", "")
    role = request.POST.get("role", Membership.Role.CLIENT)
    try:
        issued = actions.invite(
            acting_user=request.user,  # type: ignore[arg-type]
            acting_role=request_role(request),
            email=email,
            role=role,
            site_url=settings.SITE_URL,
        )
    except ValidationError as error:
        return render(
            request,
            "accounts/team.html",
            _team_context(
                request, invite_errors=_errors(error), invite_form={"email": email, "role": role}
            ),
            status=400,
        )
    return render(request, "accounts/team.html", _team_context(request, issued=issued))


@tenant_page(TEAM)
@require_POST
def team_member(request: HttpRequest, user_id: int) -> HttpResponse:
    """Change a member's role, or deactivate / reactivate the account."""
    acting_user, acting_role = cast(User, request.user), request_role(request)
    change = request.POST.get("change", "")
    get_object_or_404(Membership, user_id=user_id)
    try:
        if change == "role":
            membership = actions.change_role(
                acting_user=acting_user,
                acting_role=acting_role,
                user_id=user_id,
                role=request.POST.get("role", ""),
            )
            messages.success(
                request, f"{actions.display_name(membership.user)} is now {membership.role}."
            )
        elif change in ("deactivate", "reactivate"):
            user = actions.set_member_active(
                acting_user=acting_user,
                acting_role=acting_role,
                user_id=user_id,
                active=change == "reactivate",
            )
            done = "reactivated" if user.is_active else "deactivated: they can no longer sign in"
            messages.success(request, f"{actions.display_name(user)} was {done}.")
        else:
            raise Http404
    except ValidationError as error:
        return render(
            request,
            "accounts/team.html",
            _team_context(request, member_errors=_errors(error)),
            status=400,
        )
    return HttpResponseRedirect(reverse("app-team"))


@tenant_page(TEAM)
@require_POST
def team_invitation_revoke(request: HttpRequest, invitation_id: uuid.UUID) -> HttpResponse:
    invitation = get_object_or_404(Invitation, id=invitation_id)
    try:
        actions.revoke_invitation(
            acting_user=request.user,  # type: ignore[arg-type]
            acting_role=request_role(request),
            invitation=invitation,
        )
    except ValidationError as error:
        messages.error(request, " ".join(_errors(error)))
    else:
        messages.success(request, f"The invitation for {invitation.email} was revoked.")
    return HttpResponseRedirect(reverse("app-team"))


# ---------------------------------------------------------------------------- invitation link


@never_cache
@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """What someone who opens an invitation link sees: who invited them, to what, as which
    role; sign in, then accept. The link is verified first: one that does not (malformed,
    unknown, forged, expired, revoked, used) is one neutral page, the same whoever opens it,
    naming no organisation."""
    tenant_id = open_invitation_tenant(token)
    tenant = Tenant.objects.defer("logo").filter(id=tenant_id).first() if tenant_id else None
    if tenant is None:
        return _invitation_gone(request)
    user = request.user
    own_tenant = current_tenant_id()
    if own_tenant is not None and own_tenant != tenant.id:
        # A real, open invitation to another organisation: its name is what the link says.
        return render(
            request,
            "accounts/invitation.html",
            {"state": "other_tenant", "invited_to": tenant},
            status=403,
        )
    # Anonymous visitors: look the invitation up in its tenant, to show what it is.
    with tenant_context(tenant.id):
        found = actions.find_invitation(token)
        if found is None or not found.is_open:
            return _invitation_gone(request)
        context: dict[str, Any] = {"invited_to": tenant, "invitation": found, "token": token}
        if not user.is_authenticated:
            context["state"] = "sign_in"
            context["sign_in_url"] = (
                reverse("oidc_authentication_init") + "?next=" + request.get_full_path()
            )
            context["dev_idp_signup"] = settings.DEV_IDP
            return render(request, "accounts/invitation.html", context)
        if request.method == "POST":
            try:
                membership = actions.accept_invitation(user=cast(User, user), invitation=found)
            except ValidationError as error:
                context.update(state="refused", errors=_errors(error))
                return render(request, "accounts/invitation.html", context, status=403)
            messages.success(request, f"Welcome to {tenant.name}! You joined as {membership.role}.")
            return HttpResponseRedirect(reverse("home"))
        context["state"] = "accept"
        return render(request, "accounts/invitation.html", context)


def _invitation_gone(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/invitation.html", {"state": "gone"}, status=404)


# ---------------------------------------------------------------------------- support sessions


@tenant_page(ADMINS, message="Only your organisation's owners and admins see support access.")
@require_GET
def support_page(request: HttpRequest) -> HttpResponse:
    sessions = SupportSession.objects.order_by("-created_at")[:200]
    now = timezone.now()
    return render(
        request,
        "accounts/support.html",
        {
            "sessions": [
                {
                    "session": s,
                    "active": s.ended_at is None and s.expires_at > now,
                }
                for s in sessions
            ],
        },
    )


@tenant_page(ADMINS, message="Only your organisation's owners and admins end support access.")
@require_POST
def support_end(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """End a support session now: the database stops admitting it at its next statement."""
    session = get_object_or_404(SupportSession, id=session_id)
    if end_support_session_for_tenant(acting_user=request.user, session=session):
        messages.success(
            request, "Support access ended. Playbook support no longer sees your data."
        )
    return HttpResponseRedirect(reverse("app-support"))
