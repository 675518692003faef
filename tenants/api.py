"""The base of every tenant API view (STYLE.md, from PostHog's team scoping).

`TenantScopedViewSet` resolves the tenant once from the verified principal, refuses
principals without one, checks the principal's role against the view's `roles` table, and
builds every queryset from the tenant-scoped default manager. Subclasses may not override
`get_queryset`, `get_object`, `initial` or `get_permissions` (a TypeError at import time);
they narrow visibility in `safely_get_queryset`. Another tenant's object is invisible to the
database, so it is a 404 with exactly the body of a missing one.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Model, QuerySet
from rest_framework import exceptions, permissions, viewsets
from rest_framework.request import Request

from accounts.roles import API_KEY
from tenants.branding import request_role
from tenants.context import current_tenant_id

_FORBIDDEN_OVERRIDES = ("get_queryset", "get_object", "initial", "get_permissions")
NO_TENANT = "This account does not belong to a tenant."


class RolePermission(permissions.BasePermission):
    """Allow an action only to the roles the view lists for it; API keys also by scope."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        role = view.role
        if role is None:
            raise exceptions.PermissionDenied(
                NO_TENANT
                if view.tenant_id_or_none is None
                else "You are not a member of this tenant."
            )
        if role not in view.roles_for_action():
            return False
        if role == API_KEY and request.method not in permissions.SAFE_METHODS:
            return getattr(request.user, "scope", "read") == "write"
        return True


class TenantScopedViewSetMixin:
    model: type[Model]
    # action name -> roles allowed; "*" is the default for actions not listed.
    roles: dict[str, frozenset[str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _FORBIDDEN_OVERRIDES:
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides {name}(); tenant viewsets narrow data in "
                    "safely_get_queryset() and permissions in `roles`."
                )

    def get_permissions(self) -> list[permissions.BasePermission]:
        return [RolePermission()]

    def roles_for_action(self) -> frozenset[str]:
        action = getattr(self, "action", None) or ""
        return self.roles.get(action, self.roles.get("*", frozenset()))

    @property
    def tenant_id_or_none(self) -> uuid.UUID | None:
        return current_tenant_id()

    @property
    def tenant_id(self) -> uuid.UUID:
        tenant_id = current_tenant_id()
        if tenant_id is None:  # initial() guarantees this cannot happen in a handler
            raise exceptions.PermissionDenied(NO_TENANT)
        return tenant_id

    @property
    def role(self) -> str | None:
        return request_role(self.request)  # type: ignore[attr-defined]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        principal_tenant = getattr(request.user, "tenant_id", None)
        if principal_tenant is None:
            raise exceptions.PermissionDenied(NO_TENANT)
        if current_tenant_id() != principal_tenant:
            # The middleware enters the principal's tenant; anything else is a wiring bug.
            raise exceptions.PermissionDenied("Tenant context does not match the credential.")

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset

    def get_queryset(self) -> QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):  # OpenAPI generation: no request
            return self.model.objects.unscoped().none()  # type: ignore[attr-defined]
        return self.safely_get_queryset(self.model.objects.all())  # type: ignore[attr-defined]


class TenantScopedViewSet(TenantScopedViewSetMixin, viewsets.GenericViewSet):
    pass
