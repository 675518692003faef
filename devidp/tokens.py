"""JWT access tokens for the API, signed with the provider's RSA key (kid = thumbprint, as
in its JWKS). Audience: OIDC_API_AUDIENCE. django-oauth-toolkit stores only a checksum."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from django.conf import settings
from jwcrypto import jwk
from oauth2_provider.settings import oauth2_settings

from devidp.validators import identity_claims


def signing_key() -> tuple[str, str]:
    pem = oauth2_settings.OIDC_RSA_PRIVATE_KEY
    key = jwk.JWK.from_pem(pem.encode())
    return pem, key.thumbprint()


def signed_access_token(request: Any, refresh_token: bool = False) -> str:
    pem, kid = signing_key()
    now = int(time.time())
    claims: dict[str, Any] = {
        **identity_claims(request.user),
        "iss": settings.OIDC_ISSUER,
        "aud": settings.OIDC_API_AUDIENCE[0],
        "iat": now,
        "nbf": now,
        "exp": now + int(oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS),
        "jti": uuid.uuid4().hex,
        "client_id": request.client_id,
        "scope": " ".join(request.scopes or []),
    }
    return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})
