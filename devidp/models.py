"""The local identity provider's directory: what it asserts about each person.

It plays the part of Cognito, Auth0 or Keycloak in development and tests. Its claims are its
own: the tenant it names is what the relying party (the rest of Playbook) receives in the
signed token, and can differ from the tenant the account is already bound to — which is how
the "tenant claim changed" refusal is tested.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class DevIdentity(models.Model):
    """Not a TenantScopedModel: this is the stand-in identity provider's own directory (it
    plays an external system, which knows no tenant context), installed only with DEV_IDP=1
    and refused in production. It holds demo accounts, never customer data."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dev_identity"
    )
    subject = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant_claim = models.CharField(max_length=100, blank=True)
    roles = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"{self.user} ({self.tenant_claim or 'no tenant'})"
