"""Accounts (and invitation links) read before a tenant is known.

`accounts_user` is under row-level security (accounts migration 0006): a tenant's people
only in its context. A session's user, an OIDC subject at login or a username at the
admin's password step are read through `playbook_lookup_user`, which answers one lookup the
app signed (`tenants.context.sign_lookup`) -- never a list.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

from django.db import connection

from accounts.models import User
from tenants.context import sign_lookup
from tenants.models import Tenant

LOOKUP_SQL = (
    "SELECT u.*, t.slug AS lookup_tenant_slug, t.name AS lookup_tenant_name, "
    "t.status AS lookup_tenant_status "
    "FROM public.playbook_lookup_user(%s) u "
    "LEFT JOIN public.tenants_tenant t ON t.id = u.tenant_id"
)


def find_user(by: Literal["id", "oidc", "username"], value: str) -> User | None:
    """The account with this id, `<issuer> <subject>` or username (one statement, its
    tenant's slug, name and status with it), or None."""
    found = list(User.objects.raw(LOOKUP_SQL, [sign_lookup(by, value)]))
    if not found:
        return None
    user = found[0]
    if user.tenant_id is not None:
        tenant = Tenant(
            id=user.tenant_id,
            slug=user.lookup_tenant_slug,  # type: ignore[attr-defined]
            name=user.lookup_tenant_name,  # type: ignore[attr-defined]
            status=user.lookup_tenant_status,  # type: ignore[attr-defined]
        )
        tenant._state.adding = False
        tenant._state.db = user._state.db
        user.tenant = tenant
    return user


def user_by_id(user_id: object) -> User | None:
    try:
        return find_user("id", str(int(str(user_id))))
    except ValueError:
        return None


# An invitation link's token (accounts.actions.invite): inv_<tenant hex>_<secret>.
INVITATION_TOKEN = re.compile(r"inv_[0-9a-f]{32}_[A-Za-z0-9_-]{20,128}")


def open_invitation_tenant(token: str) -> uuid.UUID | None:
    """The tenant of the open invitation this link is, or None -- the same None for a
    malformed, unknown, forged, expired, revoked or used link. Checked in the database by
    `playbook_open_invitation` (accounts migration 0009), which also answers inside another
    tenant's context; a token of another shape never reaches the database."""
    if not INVITATION_TOKEN.fullmatch(token):
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT public.playbook_open_invitation(%s)", [token])
        row = cursor.fetchone()
    return row[0] if row and row[0] else None
