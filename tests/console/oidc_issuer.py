"""A small OpenID Connect issuer for the tests, in the way Entra ID answers: discovery, an
authorize endpoint that signs in one configured account at once, a token endpoint that checks
the PKCE verifier, and the JWKS of its RSA key. Served by uvicorn on a loopback port."""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

KID = "test-key-1"


@dataclass
class Account:
    """Who signs in next, and what the ID token says about them."""

    username: str = "admin@contoso.test"
    roles: list[str] = field(default_factory=lambda: ["ContactSync.Admin"])
    groups: list[str] = field(default_factory=list)


@dataclass
class Issuer:
    url: str
    client_id: str
    account: Account
    key: rsa.RSAPrivateKey
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    pkce_checked: int = 0
    wrong_key: rsa.RSAPrivateKey | None = None  # sign with this instead: a forged token

    def app(self) -> Starlette:
        async def discovery(_: Request) -> Response:
            return JSONResponse({"issuer": self.url,
                                 "authorization_endpoint": f"{self.url}/authorize",
                                 "token_endpoint": f"{self.url}/token",
                                 "jwks_uri": f"{self.url}/keys"})

        async def authorize(request: Request) -> Response:
            q = request.query_params
            assert q["client_id"] == self.client_id and q["response_type"] == "code"
            assert q["code_challenge_method"] == "S256"
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"challenge": q["code_challenge"], "nonce": q["nonce"],
                                "redirect_uri": q["redirect_uri"]}
            return RedirectResponse(
                f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", 302)

        async def token(request: Request) -> Response:
            form = dict(parse_qsl((await request.body()).decode()))
            grant = self.codes.pop(str(form["code"]), None)
            if grant is None or form["redirect_uri"] != grant["redirect_uri"]:
                return JSONResponse({"error": "invalid_grant"}, 400)
            digest = hashlib.sha256(str(form["code_verifier"]).encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
                return JSONResponse({"error": "invalid_grant",
                                     "error_description": "PKCE verification failed"}, 400)
            self.pkce_checked += 1
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": self.url, "aud": self.client_id, "sub": "sub-1", "iat": now,
                "exp": now + 3600, "nonce": grant["nonce"],
                "preferred_username": self.account.username, "roles": self.account.roles,
                "groups": self.account.groups}
            signing = self.wrong_key or self.key
            id_token = jwt.encode(claims, signing, algorithm="RS256", headers={"kid": KID})
            return JSONResponse({"id_token": id_token, "token_type": "Bearer"})

        async def keys(_: Request) -> Response:
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
            return JSONResponse({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})

        return Starlette(routes=[
            Route("/.well-known/openid-configuration", discovery), Route("/authorize", authorize),
            Route("/token", token, methods=["POST"]), Route("/keys", keys)])


def serve(client_id: str) -> tuple[Issuer, uvicorn.Server, threading.Thread]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    issuer = Issuer(f"http://127.0.0.1:{port}", client_id, Account(),
                    rsa.generate_private_key(public_exponent=65537, key_size=2048))
    server = uvicorn.Server(uvicorn.Config(issuer.app(), host="127.0.0.1", port=port,
                                           log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # bounded by the test's timeout
        time.sleep(0.05)
    return issuer, server, thread
