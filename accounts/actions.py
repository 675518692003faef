"""The team: inviting people, changing roles, deactivating accounts. Each action checks what
the acting person's role allows, and records its audit event in the same transaction.

Who may do what:
- owners invite and manage anyone, owners included;
- admins invite and manage admins, consultants and clients (not owners);
- consultants invite clients;
- nobody changes their own role or deactivates themselves, and a tenant keeps an active owner.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts.models import Invitation, Membership, User
from accounts.roles import ADMIN, CLIENT, CONSULTANT, OWNER
from audit.actions import record_audit_event
from tenants.context import current_tenant_id, platform_context, require_tenant_id, tenant_context
from tenants.models import Tenant

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "inv_"  # noqa: S105 (a prefix, not a secret)

# The roles each role may invite, assign or manage.
MANAGEABLE_ROLES: dict[str, frozenset[str]] = {
    OWNER: frozenset({OWNER, ADMIN, CONSULTANT, CLIENT}),
    ADMIN: frozenset({ADMIN, CONSULTANT, CLIENT}),
    CONSULTANT: frozenset({CLIENT}),
}


class TeamError(ValidationError):
    """A team change that is not allowed; the message says why."""


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    link: str  # shown once: only the token's hash is stored
    emailed: bool


def display_name(user: User) -> str:
    return user.get_full_name() or user.email or user.get_username()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def find_invitation(token: str) -> Invitation | None:
    """The current tenant's invitation with this token (open or not)."""
    return (
        Invitation.objects.select_related("invited_by")
        .filter(token_hash=_token_hash(token))
        .first()
    )


def _check_may_manage(acting_role: str | None, role: str) -> None:
    if role not in MANAGEABLE_ROLES.get(acting_role or "", frozenset()):
        raise TeamError(f"Your role ({acting_role or 'none'}) cannot give someone the {role} role.")


@transaction.atomic
def invite(
    *, acting_user: User, acting_role: str | None, email: str, role: str, site_url: str
) -> IssuedInvitation:
    """Invite `email` to the current tenant as `role`. An earlier open invitation of the same
    address is replaced. The email (if email is configured) is sent once this commits."""
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise TeamError("Enter a valid email address.") from None
    if role not in Membership.Role.values:
        raise TeamError("Choose a role.")
    _check_may_manage(acting_role, role)
    members = Membership.objects.filter(user__email__iexact=email, user__is_active=True)
    if members.exists():
        raise TeamError(f"{email} is already a member of your organisation.")
    for earlier in Invitation.objects.filter(
        email__iexact=email, accepted_at__isnull=True, revoked_at__isnull=True
    ):
        earlier.revoked_at = timezone.now()
        earlier.save(update_fields=["revoked_at"])
    tenant_id = require_tenant_id()
    token = f"{TOKEN_PREFIX}{tenant_id.hex}_{secrets.token_urlsafe(24)}"
    invitation = Invitation.objects.create(
        email=email, role=role, token_hash=_token_hash(token), invited_by=acting_user
    )
    record_audit_event(
        "invitation.created",
        actor=acting_user,
        resource_type="invitation",
        resource_id=invitation.id,
        context={"email": email, "role": role},
    )
    link = site_url.rstrip("/") + reverse("invitation", args=[token])
    if settings.SEND_EMAIL:
        tenant = Tenant.objects.get(id=tenant_id)
        context = {
            "tenant": tenant,
            "inviter": display_name(acting_user),
            "role": role,
            "link": link,
            "expires_at": invitation.expires_at,
        }
        subject = f"{context['inviter']} invited you to {tenant.name}"
        body = render_to_string("accounts/invitation_email.txt", context)
        transaction.on_commit(lambda: _send(subject, body, email))
    return IssuedInvitation(invitation, link, settings.SEND_EMAIL)


def _send(subject: str, body: str, to: str) -> None:
    try:
        send_mail(subject, body, None, [to])
    except Exception:
        # The invitation stands: the dashboard showed its link to pass on by hand.
        logger.warning("invitation email could not be sent", exc_info=True)


@transaction.atomic
def revoke_invitation(
    *, acting_user: User, acting_role: str | None, invitation: Invitation
) -> None:
    _check_may_manage(acting_role, invitation.role)
    if invitation.accepted_at or invitation.revoked_at:
        return
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    record_audit_event(
        "invitation.revoked",
        actor=acting_user,
        resource_type="invitation",
        resource_id=invitation.id,
        context={"email": invitation.email},
    )


@transaction.atomic
def accept_invitation(*, user: User, invitation: Invitation) -> Membership:
    """The signed-in `user` takes the invited role. The account must be of the invitation's
    tenant (the identity provider placed it there) and have the invited email address."""
    invitation = Invitation.objects.select_for_update().get(id=invitation.id)
    if not invitation.is_open:
        raise TeamError("This invitation has expired or was already used.")
    if user.tenant_id != invitation.tenant_id:
        raise TeamError("This invitation is for another organisation.")
    if (user.email or "").strip().lower() != invitation.email:
        raise TeamError(
            f"This invitation is for {invitation.email}; you are signed in as "
            f"{user.email or 'an account without an email address'}."
        )
    membership, _ = Membership.objects.get_or_create(user=user, defaults={"role": invitation.role})
    previous = membership.role
    if membership.role != invitation.role:
        membership.role = invitation.role
        membership.save(update_fields=["role"])
    invitation.accepted_at, invitation.accepted_by = timezone.now(), user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    record_audit_event(
        "invitation.accepted",
        actor=user,
        resource_type="invitation",
        resource_id=invitation.id,
        context={"role": invitation.role, "previous_role": previous},
    )
    return membership


def _member(user_id: Any) -> Membership:
    membership = Membership.objects.select_related("user").filter(user_id=user_id).first()
    if membership is None:
        raise TeamError("This person is not a member of your organisation.")
    return membership


def _lock_owners() -> None:
    """Serialise changes that could remove an owner: two owners demoting or deactivating
    each other at once would each still see the other as an active owner."""
    list(Membership.objects.select_for_update().filter(role=OWNER).order_by("pk").values("pk"))


def _other_active_owners(user_id: Any) -> bool:
    return (
        Membership.objects.filter(role=OWNER, user__is_active=True)
        .exclude(user_id=user_id)
        .exists()
    )


@transaction.atomic
def change_role(
    *, acting_user: User, acting_role: str | None, user_id: Any, role: str
) -> Membership:
    if role not in Membership.Role.values:
        raise TeamError("Choose a role.")
    _lock_owners()
    membership = _member(user_id)
    if membership.user_id == acting_user.pk:
        raise TeamError("You cannot change your own role; ask another owner or admin.")
    _check_may_manage(acting_role, membership.role)
    _check_may_manage(acting_role, role)
    if membership.role == OWNER and role != OWNER and not _other_active_owners(user_id):
        raise TeamError("Your organisation needs at least one active owner.")
    if membership.role == role:
        return membership
    previous, membership.role = membership.role, role
    membership.save(update_fields=["role"])
    record_audit_event(
        "member.role_changed",
        actor=acting_user,
        resource_type="user",
        resource_id=membership.user_id,
        context={"from": previous, "to": role},
    )
    return membership


@transaction.atomic
def set_member_active(
    *, acting_user: User, acting_role: str | None, user_id: Any, active: bool
) -> User:
    """Deactivate (no sign-in, current sessions end) or reactivate a member's account."""
    _lock_owners()
    membership = _member(user_id)
    user = membership.user
    if user.pk == acting_user.pk:
        raise TeamError("You cannot deactivate your own account.")
    _check_may_manage(acting_role, membership.role)
    if not active and membership.role == OWNER and not _other_active_owners(user_id):
        raise TeamError("Your organisation needs at least one active owner.")
    if user.is_active == active:
        return user
    user.is_active = active
    fields = ["is_active"]
    if not active:  # end every session now, and for good (reactivation signs in afresh)
        user.session_epoch += 1
        fields.append("session_epoch")
    user.save(update_fields=fields)
    record_audit_event(
        "member.reactivated" if active else "member.deactivated",
        actor=acting_user,
        resource_type="user",
        resource_id=user.pk,
        context={"role": membership.role},
    )
    return user


def record_last_login(sender: Any, user: User, **kwargs: Any) -> None:
    """`user_logged_in` receiver, in place of Django's `update_last_login`: the account is a
    row under row-level security, written in its own tenant's context (platform staff in a
    platform context)."""
    user.last_login = timezone.now()
    if user.tenant_id is None:
        with platform_context(user.pk):
            User.objects.filter(pk=user.pk).update(last_login=user.last_login)
    elif current_tenant_id() == user.tenant_id:
        User.objects.filter(pk=user.pk).update(last_login=user.last_login)
    else:
        with tenant_context(user.tenant_id, user_id=user.pk):
            User.objects.filter(pk=user.pk).update(last_login=user.last_login)
