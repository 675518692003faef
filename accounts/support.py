"""Support sessions: platform staff see one tenant's data, for a reason, for a while.

Staff open a session (tenant + written reason + duration); its id goes into their Django
session, and every later request of theirs runs in `tenant_context(tenant,
support_session=id)`. The database admits rows only while that session is valid, and every
view and change in the support admin is written to the tenant's audit log with the reason.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from accounts.models import SupportSession, User
from audit.actions import record_audit_event
from tenants.context import (
    PLATFORM_TENANT,
    Principal,
    current_support_session_id,
    tenant_context,
)
from tenants.middleware import RequestTenant, principal_tenant
from tenants.models import Tenant

SESSION_KEY = "support_session"
MIN_REASON_LENGTH = 10


def is_support_staff(user: Any) -> bool:
    return bool(
        getattr(user, "is_authenticated", False)
        and getattr(user, "is_staff", False)
        and getattr(user, "tenant_id", None) is None
    )


def active_support_session(request: HttpRequest) -> dict[str, str] | None:
    """The support session stored in this staff member's login session, if any."""
    if not is_support_staff(request.user) or not hasattr(request, "session"):
        return None
    # Only a second-factor-verified staff session may carry tenant access.
    is_verified = getattr(request.user, "is_verified", None)
    if not callable(is_verified) or not is_verified():
        return None
    data = request.session.get(SESSION_KEY)
    if not isinstance(data, dict):
        return None
    return data


def support_session_admits_rows() -> bool:
    """Whether the database still admits the current support session's tenant (the session
    is neither ended nor expired: the same check the support policy makes)."""
    if current_support_session_id() is None:
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT public.playbook_context_tenant()")
        row = cursor.fetchone()
    return row is not None and row[0] is not None


def _platform_paths() -> tuple[str, ...]:
    """Admin pages that act on platform records (support sessions themselves, tenants, staff
    accounts), each entering a tenant's own context where it writes to that tenant."""
    return (
        reverse("admin:support_open"),
        reverse("admin:support_end"),
        reverse("admin:tenants_tenant_changelist"),
        reverse("admin:accounts_user_changelist"),
    )


def resolve_request_context(request: HttpRequest) -> RequestTenant | None:
    """settings.TENANT_CONTEXT_RESOLVER: the principal's tenant, or staff's support session."""
    own = principal_tenant(request)
    if own is not None:
        return own
    user = getattr(request, "user", None)
    is_verified = getattr(user, "is_verified", None)
    if not is_support_staff(user) or not callable(is_verified) or not is_verified():
        return None
    if request.path_info.startswith(_platform_paths()):
        # Platform records (support sessions themselves, tenants, staff accounts): a verified
        # platform context; writes to a tenant's own records switch into its context.
        return RequestTenant(PLATFORM_TENANT, Principal.platform(getattr(user, "pk", None)))
    data = active_support_session(request)
    if data is None:
        return None
    try:
        return RequestTenant(uuid.UUID(data["tenant_id"]), Principal.support(data["id"]))
    except (KeyError, ValueError):
        request.session.pop(SESSION_KEY, None)
        return None


@transaction.atomic
def open_support_session(
    *, staff: User, tenant: Tenant, reason: str, minutes: int | None = None
) -> SupportSession:
    if not is_support_staff(staff):
        raise ValidationError("Only platform staff open support sessions.")
    reason = reason.strip()
    if len(reason) < MIN_REASON_LENGTH:
        raise ValidationError(
            f"Write a reason of at least {MIN_REASON_LENGTH} characters; the tenant reads it."
        )
    minutes = minutes or settings.SUPPORT_SESSION_DEFAULT_MINUTES
    if not 1 <= minutes <= settings.SUPPORT_SESSION_MAX_MINUTES:
        raise ValidationError(
            f"A support session lasts 1 to {settings.SUPPORT_SESSION_MAX_MINUTES} minutes."
        )
    with tenant_context(tenant, principal=Principal.staff(staff.pk)):
        session = SupportSession.objects.create(
            staff=staff,
            staff_username=staff.get_username(),
            staff_name=staff.get_full_name(),
            reason=reason,
            expires_at=timezone.now() + timedelta(minutes=minutes),
        )
        record_audit_event(
            "support.session_opened",
            actor=staff,
            resource_type="support_session",
            resource_id=session.id,
            context={"staff": staff.get_username(), "reason": reason, "minutes": minutes},
        )
    return session


@transaction.atomic
def end_support_session(*, staff: User, session_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    with tenant_context(tenant_id, principal=Principal.staff(staff.pk)):
        session = SupportSession.objects.filter(id=session_id, staff=staff).first()
        if session is None or session.ended_at is not None:
            return
        session.ended_at = timezone.now()
        session.save(update_fields=["ended_at"])
        record_audit_event(
            "support.session_ended",
            actor=staff,
            resource_type="support_session",
            resource_id=session.id,
            context={"staff": staff.get_username()},
        )


@transaction.atomic
def end_support_session_for_tenant(*, acting_user: Any, session: SupportSession) -> bool:
    """A tenant admin ends a support session on her tenant now (False: it had already ended).
    The database checks the session at every entry, so access stops at its next request."""
    session = SupportSession.objects.select_for_update().get(id=session.id)
    if session.ended_at is not None or session.expires_at <= timezone.now():
        return False
    session.ended_at = timezone.now()
    session.save(update_fields=["ended_at"])
    record_audit_event(
        "support.session_ended_by_tenant",
        actor=acting_user,
        resource_type="support_session",
        resource_id=session.id,
        context={"staff": session.staff_username},
    )
    return True


def remember_support_session(request: HttpRequest, session: SupportSession) -> None:
    request.session[SESSION_KEY] = {
        "id": str(session.id),
        "tenant_id": str(session.tenant_id),
        "tenant_name": Tenant.objects.get(id=session.tenant_id).name,
        "expires_at": session.expires_at.isoformat(),
    }


def forget_support_session(request: HttpRequest) -> None:
    request.session.pop(SESSION_KEY, None)
