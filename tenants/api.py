"""The base of every tenant API view (STYLE.md, from PostHog's team scoping).

`TenantScopedViewSet` resolves the tenant once from the verified principal, refuses
principals without one, and builds every queryset from the tenant-scoped default manager.
Subclasses may not override `get_queryset` or `get_object` (a TypeError at import time);
they narrow visibility in `safely_get_queryset`. Another tenant's object is invisible to
the database, so it is a 404 with exactly the body of a missing one.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Model, QuerySet
from rest_framework import exceptions, viewsets
from rest_framework.request import Request

from tenants.context import current_tenant_id

_FORBIDDEN_OVERRIDES = ("get_queryset", "get_object", "initial")


class TenantScopedViewSetMixin:
    model: type[Model]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _FORBIDDEN_OVERRIDES:
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides {name}(); tenant viewsets narrow data in "
                    "safely_get_queryset() instead."
                )

    @property
    def tenant_id(self) -> uuid.UUID:
        tenant_id = current_tenant_id()
        if tenant_id is None:  # initial() guarantees this cannot happen in a handler
            raise exceptions.PermissionDenied("This account does not belong to a tenant.")
        return tenant_id

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        user_tenant = getattr(request.user, "tenant_id", None)
        if user_tenant is None:
            raise exceptions.PermissionDenied("This account does not belong to a tenant.")
        if current_tenant_id() != user_tenant:
            # The middleware enters the principal's tenant; anything else is a wiring bug.
            raise exceptions.PermissionDenied("Tenant context does not match the credential.")

    def safely_get_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset

    def get_queryset(self) -> QuerySet[Any]:
        return self.safely_get_queryset(self.model.objects.all())  # type: ignore[attr-defined]


class TenantScopedViewSet(TenantScopedViewSetMixin, viewsets.GenericViewSet):
    pass
