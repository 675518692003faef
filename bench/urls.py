"""URLs of the machinery benchmark's server (bench/settings.py): every product URL, plus

- `bench/machinery/conversations/`: the product's conversation list (ConversationViewSet:
  bearer JWT verified against the cached JWKS, the user bound and checked, the tenant
  entered with set_config in the request's transaction, the role looked up, the list read
  under row-level security), preceded by the two steps a client's question takes before an
  agent run: the limiter's admission (`billing.limiter.check_request`, ADMIT + SETTLE in
  Redis) and the entitlement registry (`agents.registry.resolve`, cached in Redis);
- `bench/plain/<tenant_id>/conversations/`: the same list, fields, page size and ordering
  from the unprotected copy table, with no authentication at all (AllowAny).

Both go through the same middleware stack (it is the same app). Every response carries the
worker's pid (`X-Bench-Worker`), so the benchmark can warm up every worker.
"""

from __future__ import annotations

import os
from typing import Any

from django.db.models import QuerySet
from django.urls import path
from rest_framework import generics, permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from agents import registry
from bench.models import PlainConversation
from billing import limiter
from config import urls as product
from conversations.api import ConversationViewSet


class MachineryConversationViewSet(ConversationViewSet):
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        limiter.check_request(user_id=request.user.pk)
        registry.resolve()
        response = super().list(request, *args, **kwargs)
        response["X-Bench-Worker"] = str(os.getpid())
        return response


class PlainConversationSerializer(serializers.ModelSerializer):
    class Meta:
        model = PlainConversation
        fields = ["id", "title", "status", "client", "created_at", "updated_at"]


class PlainConversationList(generics.ListAPIView):
    serializer_class = PlainConversationSerializer
    authentication_classes = ()
    permission_classes = (permissions.AllowAny,)

    def get_queryset(self) -> QuerySet[PlainConversation]:
        return PlainConversation.objects.filter(tenant_id=self.kwargs["tenant_id"])

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        response["X-Bench-Worker"] = str(os.getpid())
        return response


urlpatterns = [
    path(
        "bench/machinery/conversations/",
        MachineryConversationViewSet.as_view({"get": "list"}),
        name="bench-machinery",
    ),
    path(
        "bench/plain/<uuid:tenant_id>/conversations/",
        PlainConversationList.as_view(),
        name="bench-plain",
    ),
    *product.urlpatterns,
]

handler400 = product.handler400
handler403 = product.handler403
handler404 = product.handler404
handler500 = product.handler500
