"""The one way to enter a tenant: `tenant_context(tenant_id)` (DESIGN.md invariant 4).

The database trusts nothing the runtime role can set for itself. Entering signs a context
-- tenant, principal (a user, an API key, a support session, platform staff, the system or
an audit operator), expiry, nonce -- with an HMAC key that only the owner role can read in
the database (`settings.TENANT_CONTEXT_KEYS`, installed by `manage.py install_context_keys`
after every migrate), and sends it with one statement, as a bind parameter (so it never
shows in `pg_stat_activity`):

    SELECT refusal, role FROM public.playbook_enter($1)

That SECURITY DEFINER function verifies the signature and the expiry, verifies the
principal (active, bound to that tenant, key not revoked, support session open, tenant
active), binds the context to this backend and this transaction with a second MAC, and
returns the principal's role -- one round trip, fresh on every entry. Every tenant policy
calls `playbook_context_tenant()`, which re-verifies the bound context. A forged, expired,
absent, other-backend or earlier-transaction context sees zero rows and can write nothing.

The context lives in a transaction-local setting: `tenant_context` opens a transaction (a
savepoint inside one), and a ContextVar beside it lets the ORM fail loudly outside a tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

if TYPE_CHECKING:
    from tenants.models import Tenant

CONTEXT_SETTING = "playbook.context"
ENTER_SQL = "SELECT refusal, role FROM public.playbook_enter(%s)"
LEAVE_SQL = "SELECT set_config('playbook.context', '', true)"

PrincipalKind = Literal[
    "user", "api_key", "support", "staff", "system", "operator", "platform", "directory"
]
# The tenant of a platform context: no tenant has it, so tenant tables show nothing.
PLATFORM_TENANT = uuid.UUID(int=0)


class TenantScopeError(RuntimeError):
    """Tenant data was touched outside a tenant context, or across tenants."""


class TenantContextRefused(TenantScopeError):
    """The database refused to enter: the principal is inactive, revoked or ended, the
    tenant is not active, or the context's signature or key is not the database's."""

    def __init__(self, reason: str, principal: Principal) -> None:
        super().__init__(f"Tenant context refused ({reason}) for {principal.kind}.")
        self.reason = reason
        self.principal = principal


@dataclass(frozen=True)
class Principal:
    """Who acts in the tenant: what the database verifies at entry and audits as the actor."""

    kind: PrincipalKind
    id: str = ""

    @classmethod
    def user(cls, user_id: int) -> Principal:
        return cls("user", str(int(user_id)))

    @classmethod
    def api_key(cls, key_id: uuid.UUID) -> Principal:
        return cls("api_key", str(uuid.UUID(str(key_id))))

    @classmethod
    def support(cls, session_id: uuid.UUID | str) -> Principal:
        return cls("support", str(uuid.UUID(str(session_id))))

    @classmethod
    def staff(cls, user_id: int) -> Principal:
        return cls("staff", str(int(user_id)))

    @classmethod
    def platform(cls, staff_id: int | None = None) -> Principal:
        """Platform tables (tenants, plans, prices, entitlements): a staff member, or an
        operator command when `staff_id` is None."""
        return cls("platform", "" if staff_id is None else str(int(staff_id)))


SYSTEM = Principal("system")
OPERATOR = Principal("operator")
# The development identity provider's own requests: every account, no tenant's data.
DIRECTORY = Principal("directory")
# Contexts that may switch into a tenant's context for a block and come back.
_SWITCHING_KINDS = frozenset({"platform", "directory"})


@dataclass(frozen=True)
class _Active:
    tenant_id: uuid.UUID
    principal: Principal
    role: str | None


_active: ContextVar[_Active | None] = ContextVar("tenant_context", default=None)


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
    active = _active.get()
    return active.tenant_id if active else None


def current_principal() -> Principal | None:
    active = _active.get()
    return active.principal if active else None


def current_role() -> str | None:
    """The role the database read for the current principal when it entered (a user's
    membership role; "api_key" for a key; None for staff, support and the system)."""
    active = _active.get()
    return active.role if active else None


def current_support_session_id() -> uuid.UUID | None:
    """The support session this context runs under, if staff entered through one."""
    active = _active.get()
    if active is None or active.principal.kind != "support":
        return None
    return uuid.UUID(active.principal.id)


def require_tenant_id() -> uuid.UUID:
    active = _active.get()
    if active is None:
        raise TenantScopeError(
            "No tenant context: wrap this in `with tenant_context(tenant_id):` "
            "(requests, TenantTask and `--tenant` commands do it for you)."
        )
    return active.tenant_id


# --------------------------------------------------------------------------- signing


def signing_key() -> tuple[str, bytes]:
    """The key id and secret new contexts are signed with (the first configured key)."""
    kid, secret = settings.TENANT_CONTEXT_KEYS[0]
    return kid, secret


def _signed(fields: list[str], ttl: int | None) -> str:
    """`v1|kid|<fields>|expiry|nonce|mac`, HMAC-SHA256 with the signing key."""
    kid, secret = signing_key()
    expiry = int(time.time()) + (ttl if ttl is not None else settings.TENANT_CONTEXT_TTL_SECONDS)
    payload = "|".join(["v1", kid, *fields, str(expiry), secrets.token_hex(8)])
    mac = hmac.new(secret, f"app|{payload}".encode(), hashlib.sha256).hexdigest()
    return f"{payload}|{mac}"


def sign_context(tenant_id: uuid.UUID, principal: Principal, *, ttl: int | None = None) -> str:
    """`v1|kid|tenant|kind|principal|expiry|nonce|mac`: what playbook_enter verifies."""
    return _signed([str(tenant_id), principal.kind, principal.id], ttl)


def sign_lookup(by: str, value: str) -> str:
    """`v1|kid|lookup|by|base64(value)|expiry|nonce|mac`: a lookup of one account before a
    tenant is known, which `playbook_lookup_user` answers only when the app signed it."""
    return _signed(["lookup", by, base64.b64encode(value.encode()).decode()], None)


def _enter(using: str, tenant_id: uuid.UUID, principal: Principal) -> str | None:
    """One round trip: verify, bind and read the role. The token goes as a server-side
    bind parameter (a plain psycopg cursor), never into the statement's text."""
    connection = connections[using]
    connection.ensure_connection()
    token = sign_context(tenant_id, principal)
    with connection.wrap_database_errors, connection.connection.cursor() as cursor:
        cursor.execute(ENTER_SQL, [token])
        row = cursor.fetchone()
    if connection.queries_logged:
        connection.queries_log.append({"sql": ENTER_SQL % "'<context>'", "time": "0.000"})
    refusal, role = row if row else ("no_answer", None)
    if refusal is not None:
        raise TenantContextRefused(str(refusal), principal)
    return str(role) if role is not None else None


def _leave(using: str) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(LEAVE_SQL)


# --------------------------------------------------------------------------- entering


@contextmanager
def tenant_context(
    tenant: Tenant | uuid.UUID | str,
    *,
    principal: Principal | None = None,
    support_session: uuid.UUID | str | None = None,
    user_id: int | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Iterator[uuid.UUID]:
    """Run the block as `tenant`, inside a transaction, acting as `principal` (default: the
    system). `user_id=` and `support_session=` are shorthands for a user's or a support
    session's principal. Re-entering the same tenant as the same principal (or as the
    system, inside any principal) is a no-op; entering a different tenant or principal while
    one is active raises TenantScopeError. Raises TenantContextRefused when the database
    does not admit the principal.
    """
    tenant_id = coerce_tenant_id(tenant)
    if principal is None:
        if support_session is not None:
            principal = Principal.support(support_session)
        elif user_id is not None:
            principal = Principal.user(user_id)
        else:
            principal = SYSTEM
    active = _active.get()
    if active is not None and active.principal.kind in _SWITCHING_KINDS:
        # Platform staff or the directory acting on one tenant's records for the block.
        with _switched(tenant_id, principal, using):
            yield tenant_id
        return
    if active is not None:
        if active.tenant_id != tenant_id or (principal != active.principal and principal != SYSTEM):
            raise TenantScopeError(
                f"Already in tenant {active.tenant_id} as {active.principal.kind}; cannot "
                f"enter tenant {tenant_id} as {principal.kind} inside it."
            )
        yield tenant_id
        return

    connection = connections[using]
    nested = connection.in_atomic_block
    with transaction.atomic(using=using):
        role = _enter(using, tenant_id, principal)
        token = _active.set(_Active(tenant_id, principal, role))
        try:
            yield tenant_id
        finally:
            _active.reset(token)
        # Leaving normally inside an outer transaction: clear the context ourselves. On an
        # exception the savepoint rollback reverts it; at the outermost level COMMIT does.
        if nested and not connection.needs_rollback:
            _leave(using)


@contextmanager
def _switched(tenant_id: uuid.UUID, principal: Principal, using: str) -> Iterator[None]:
    """Inside an active context: enter another one in a savepoint for the block, then enter
    the outer one again (a bound context cannot be restored, only re-entered)."""
    outer = _active.get()
    assert outer is not None  # noqa: S101 (callers check)
    with transaction.atomic(using=using):
        role = _enter(using, tenant_id, principal)
        token = _active.set(_Active(tenant_id, principal, role))
        try:
            yield
        finally:
            _active.reset(token)
            if not connections[using].needs_rollback:
                _enter(using, outer.tenant_id, outer.principal)


@contextmanager
def acting_as(principal: Principal, *, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Inside a tenant context, act as another principal of the same tenant for the block
    (the audit operator of `audit_export`), then re-enter as before."""
    active = _active.get()
    if active is None:
        raise TenantScopeError("acting_as() needs a tenant context.")
    with _switched(active.tenant_id, principal, using):
        yield


@contextmanager
def platform_context(
    staff_id: int | None = None, *, using: str = DEFAULT_DB_ALIAS
) -> Iterator[None]:
    """Write platform tables (create a tenant, change its plan, edit prices and limits) as
    `staff_id` (verified active platform staff) or, without it, as an operator command. The
    database admits such writes only here; tenant tables show nothing inside. Inside a
    tenant's context the block runs in a savepoint and the tenant's context is entered again
    after it."""
    principal = Principal.platform(staff_id)
    if _active.get() is None:
        with tenant_context(PLATFORM_TENANT, principal=principal, using=using):
            yield
        return
    with _switched(PLATFORM_TENANT, principal, using):
        yield


@contextmanager
def directory_context(*, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """The development identity provider's requests: every account (its directory), no
    tenant's data. Only `devidp` (DEV_IDP, refused in production) enters it; inside another
    context (seeding a demo tenant) the block runs in a savepoint, as `platform_context`."""
    if _active.get() is None:
        with tenant_context(PLATFORM_TENANT, principal=DIRECTORY, using=using):
            yield
        return
    with _switched(PLATFORM_TENANT, DIRECTORY, using):
        yield


def enter_connection(using: str) -> None:
    """Enter the current tenant, as the current principal, on `using`'s connection, inside
    the transaction open there (for code that works on another thread's connection, such as
    LangGraph's checkpoint writes)."""
    active = _active.get()
    if active is None:
        raise TenantScopeError("enter_connection() needs a tenant context.")
    if not connections[using].in_atomic_block:
        raise TenantScopeError("enter_connection() needs a transaction on that connection.")
    _enter(using, active.tenant_id, active.principal)
