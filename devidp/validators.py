"""Claims the local provider puts in ID tokens and userinfo: a stable `sub`, email, name,
and the tenant and roles claims under the names the relying party is configured to read."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from oauth2_provider.oauth2_validators import OAuth2Validator

from devidp.models import DevIdentity


def identity_claims(user: Any) -> dict[str, Any]:
    identity = DevIdentity.objects.filter(user=user).first()
    claims: dict[str, Any] = {
        "email": user.email,
        "email_verified": True,
        "name": user.get_full_name() or user.get_username(),
        "given_name": user.first_name,
        "family_name": user.last_name,
        "preferred_username": user.get_username(),
    }
    if identity is not None:
        claims["sub"] = str(identity.subject)
        if identity.tenant_claim:
            claims[settings.OIDC_TENANT_CLAIM] = identity.tenant_claim
        claims[settings.OIDC_ROLES_CLAIM] = list(identity.roles)
    return claims


class DevIdPValidator(OAuth2Validator):
    oidc_claim_scope = None  # every claim in every token: this is a test provider

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        return identity_claims(request.user)
