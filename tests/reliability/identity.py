"""A small OpenID provider of the reliability suites' own: one RSA key, its JWKS over HTTP.

The app verifies bearer JWTs exactly as in production (RS256, key by `kid` from the JWKS
URL, issuer, audience, expiry); the suites mint tokens for the people they create. Point the
app at it with `OIDC_ISSUER=issuer.issuer` and `OIDC_OP_JWKS_ENDPOINT=issuer.jwks_url`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "playbook-api"


class LocalIssuer:
    def __init__(self, issuer: str = "https://login.reliability.test", kid: str = "rel-1") -> None:
        self.issuer = issuer
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        body = json.dumps({"keys": [{**public, "kid": kid, "alg": "RS256", "use": "sig"}]})
        payload = body.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.jwks_url = f"http://127.0.0.1:{self._server.server_port}/jwks.json"

    def token(
        self, *, subject: str, tenant_id: str, role: str, lifetime: int = 3600, **claims: Any
    ) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tenant_id": tenant_id,
            "roles": [role],
            **claims,
        }
        return jwt.encode(body, self._key, algorithm="RS256", headers={"kid": self.kid})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
