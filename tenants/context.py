"""The one way to enter a tenant: `tenant_context(tenant_id)` (DESIGN.md invariant 4).

It opens a transaction (or a savepoint inside one), runs
`SELECT set_config('app.current_tenant', <id>, true)` -- transaction-local, like SET LOCAL --
and sets a ContextVar for the ORM. On exit both are restored. PostgreSQL's row-level
security policies read the setting; the ContextVar lets the ORM fail loudly instead of
silently returning nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

if TYPE_CHECKING:
    from tenants.models import Tenant

TENANT_SETTING = "app.current_tenant"
SUPPORT_SETTING = "app.support_session"
# The authenticated user (for policies that depend on the role, e.g. reading the audit log).
USER_SETTING = "app.current_user"

_current_tenant: ContextVar[uuid.UUID | None] = ContextVar("current_tenant", default=None)
_current_support_session: ContextVar[uuid.UUID | None] = ContextVar(
    "current_support_session", default=None
)


class TenantScopeError(RuntimeError):
    """Tenant data was touched outside a tenant context, or across tenants."""


def coerce_tenant_id(value: Tenant | uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise TenantScopeError(f"{value!r} is not a tenant id.") from None
    tenant_pk: Any = getattr(value, "pk", None)
    if isinstance(tenant_pk, uuid.UUID):
        return tenant_pk
    raise TenantScopeError(f"Cannot enter a tenant context for {value!r}.")


def current_tenant_id() -> uuid.UUID | None:
    return _current_tenant.get()


def current_support_session_id() -> uuid.UUID | None:
    """The support session this context runs under, if staff entered through one."""
    return _current_support_session.get()


def require_tenant_id() -> uuid.UUID:
    tenant_id = _current_tenant.get()
    if tenant_id is None:
        raise TenantScopeError(
            "No tenant context: wrap this in `with tenant_context(tenant_id):` "
            "(requests, TenantTask and `--tenant` commands do it for you)."
        )
    return tenant_id


def _set_database_settings(using: str, values: dict[str, str]) -> None:
    """Transaction-local settings, all in one statement (one round trip per request)."""
    calls = ", ".join(["set_config(%s, %s, true)"] * len(values))
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT {calls}", [x for item in values.items() for x in item])


@contextmanager
def tenant_context(
    tenant: Tenant | uuid.UUID | str,
    *,
    support_session: uuid.UUID | str | None = None,
    user_id: int | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Iterator[uuid.UUID]:
    """Run the block as `tenant`, inside a transaction. Re-entering the same tenant is a no-op;
    entering a different tenant while one is active raises TenantScopeError.

    With `support_session`, platform staff enter through that support session instead: the
    database setting is `app.support_session`, not `app.current_tenant`, so rows are admitted
    only by the support policy, which checks at every statement that the session is for
    this tenant and still valid. `user_id` names the authenticated user to the database
    (`app.current_user`), for policies that depend on the user's role.
    """
    tenant_id = coerce_tenant_id(tenant)
    support_id = coerce_tenant_id(support_session) if support_session is not None else None
    active = _current_tenant.get()
    if active is not None:
        if active != tenant_id or support_id != _current_support_session.get():
            raise TenantScopeError(
                f"Already in tenant {active}; cannot enter tenant {tenant_id} inside it."
            )
        yield tenant_id
        return

    setting, value = (
        (TENANT_SETTING, str(tenant_id))
        if support_id is None
        else (SUPPORT_SETTING, str(support_id))
    )
    values = {setting: value}
    if user_id is not None:
        values[USER_SETTING] = str(int(user_id))
    connection = connections[using]
    nested = connection.in_atomic_block
    with transaction.atomic(using=using):
        _set_database_settings(using, values)
        token = _current_tenant.set(tenant_id)
        support_token = _current_support_session.set(support_id)
        try:
            yield tenant_id
        finally:
            _current_support_session.reset(support_token)
            _current_tenant.reset(token)
        # Leaving normally inside an outer transaction: clear the setting ourselves. On an
        # exception the savepoint rollback reverts it; at the outermost level COMMIT does.
        if nested and not connection.needs_rollback:
            _set_database_settings(using, dict.fromkeys(values, ""))
