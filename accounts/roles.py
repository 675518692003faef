"""Roles are permissions; the tenant is data ownership (DESIGN.md, Roles)."""

from __future__ import annotations

from typing import Any

from accounts.models import Membership, role_in_current_tenant

OWNER = Membership.Role.OWNER.value
ADMIN = Membership.Role.ADMIN.value
CONSULTANT = Membership.Role.CONSULTANT.value
CLIENT = Membership.Role.CLIENT.value
# A partner API key acts for its tenant as an integration, limited by its scope.
API_KEY = "api_key"

ADMINS = frozenset({OWNER, ADMIN})
TEAM = frozenset({OWNER, ADMIN, CONSULTANT})
MEMBERS = frozenset({OWNER, ADMIN, CONSULTANT, CLIENT})


def principal_role(principal: Any) -> str | None:
    """The principal's role in the current tenant context (None: not a member)."""
    if principal is None or not getattr(principal, "is_authenticated", False):
        return None
    if getattr(principal, "actor_type", None) == "api_key":
        return API_KEY
    return role_in_current_tenant(principal)
