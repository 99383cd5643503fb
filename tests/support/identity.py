"""An identity provider's stand-in for tests of production token mode: an RSA key, a
JWKS endpoint on 127.0.0.1 publishing it, and tokens it signs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER, AUDIENCE = "turnout-local", "turnout"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_url(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A tiny JWKS endpoint on 127.0.0.1, like an identity provider's."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "key-1", "alg": "RS256", "use": "sig"}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def idp_token(key: Any, kid: str = "key-1", alg: str = "RS256", **claims: Any) -> str:
    """A token as the provider would sign it (an organiser of G3 unless told)."""
    now = datetime.now(UTC)
    payload = {"sub": "org-9", "role": "organiser", "group_codes": ["G3"], "iss": ISSUER,
               "aud": AUDIENCE, "iat": now, "exp": now + timedelta(minutes=5), **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})
