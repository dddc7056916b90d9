"""Entra ID sign-in for the console: OpenID Connect, authorization code + PKCE.

Unsigned-in requests to any page or action are redirected to /signin, which sends the browser
to the identity provider (discovered from `<issuer>/.well-known/openid-configuration`). The
callback exchanges the code (with the PKCE verifier) for an ID token, checks its signature
(the provider's JWKS), issuer, audience, expiry and nonce, then the app role (`roles` claim)
or group (`groups` claim) named in the settings. The session is a signed cookie, HttpOnly,
Secure and SameSite=Lax (Lax: the provider's redirect back is a cross-site navigation).

Settings (CONTACTSYNC_CONSOLE_*): OIDC_ISSUER (for Entra ID
https://login.microsoftonline.com/<tenant>/v2.0), CLIENT_ID, CLIENT_SECRET (a confidential
web app; empty for a public client), REQUIRED_ROLE or REQUIRED_GROUP, SESSION_SECRET (signs
the cookies; a random one per process when empty, so sessions end on restart), PUBLIC_URL
(the console's URL as the browser sees it, for the redirect URI; default: the request's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "contactsync_session"
FLOW_COOKIE = "contactsync_signin"
SESSION_SECONDS = 8 * 3600
FLOW_SECONDS = 600
PUBLIC_PATHS = ("/signin", "/auth/callback", "/static/")


class SignInSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONTACTSYNC_CONSOLE_", extra="ignore")

    oidc_issuer: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    required_role: str = ""
    required_group: str = ""
    session_secret: SecretStr = SecretStr("")
    public_url: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.oidc_issuer and self.client_id)

    def problem(self) -> str | None:
        """Why these settings cannot be used, in one sentence; None when they can."""
        if bool(self.oidc_issuer) != bool(self.client_id):
            return ("set both CONTACTSYNC_CONSOLE_OIDC_ISSUER and CONTACTSYNC_CONSOLE_CLIENT_ID "
                    "for sign-in, or neither")
        if self.configured and not (self.required_role or self.required_group):
            return ("name who may sign in: set CONTACTSYNC_CONSOLE_REQUIRED_ROLE (an app role) "
                    "or CONTACTSYNC_CONSOLE_REQUIRED_GROUP (a group object id)")
        return None


class Signer:
    """Signed, expiring cookie values (HMAC-SHA256): the browser keeps them, cannot forge them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, data: dict[str, Any], seconds: int) -> str:
        body = base64.urlsafe_b64encode(json.dumps({**data, "exp": time.time() + seconds})
                                        .encode()).decode()
        return f"{body}.{self._mac(body)}"

    def unsign(self, value: str) -> dict[str, Any] | None:
        body, _, mac = value.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body))
        except ValueError:
            return None
        return data if float(data.get("exp", 0)) > time.time() else None

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _safe_next(path: str) -> str:
    # Only a path of ours: never "//elsewhere" or "https://elsewhere" (an open redirect).
    return path if path.startswith("/") and not path.startswith("//") else "/users"


class SignIn:
    def __init__(self, settings: SignInSettings) -> None:
        self.settings = settings
        secret = settings.session_secret.get_secret_value().encode() or secrets.token_bytes(32)
        self.signer = Signer(secret)
        self._discovery: dict[str, Any] | None = None

    async def _provider(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self.settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(url)
                answer.raise_for_status()
                self._discovery = answer.json()
        return self._discovery

    def _redirect_uri(self, request: Request) -> str:
        base = self.settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
        return base + "/auth/callback"

    def user_of(self, request: Request) -> str | None:
        session = self.signer.unsign(request.cookies.get(SESSION_COOKIE, ""))
        return str(session["user"]) if session else None

    async def start(self, request: Request) -> Response:
        provider = await self._provider()
        flow = {"state": secrets.token_urlsafe(24), "nonce": secrets.token_urlsafe(24),
                "verifier": secrets.token_urlsafe(48),
                "next": _safe_next(request.query_params.get("next", "/users"))}
        query = urlencode({
            "client_id": self.settings.client_id, "response_type": "code",
            "redirect_uri": self._redirect_uri(request), "response_mode": "query",
            "scope": "openid profile", "state": flow["state"], "nonce": flow["nonce"],
            "code_challenge": _challenge(flow["verifier"]), "code_challenge_method": "S256"})
        response = RedirectResponse(f"{provider['authorization_endpoint']}?{query}", 302)
        response.set_cookie(FLOW_COOKIE, self.signer.sign(flow, FLOW_SECONDS), httponly=True,
                            secure=True, samesite="lax", max_age=FLOW_SECONDS)
        return response

    async def callback(self, request: Request) -> Response:
        flow = self.signer.unsign(request.cookies.get(FLOW_COOKIE, ""))
        params = request.query_params
        if flow is None or not hmac.compare_digest(str(flow["state"]),
                                                   params.get("state", "")):
            return _refused("This sign-in expired or did not start here: sign in again.")
        if "error" in params or "code" not in params:
            return _refused(f"The sign-in was not completed ({params.get('error', 'no code')}): "
                            "sign in again.")
        try:
            claims = await self._id_token(request, params["code"], flow)
        except Exception:  # a token we cannot trust: never a session
            return _refused("The identity provider's answer could not be verified: sign in "
                            "again, and check the console's OIDC settings if it persists.")
        if not self._allowed(claims):
            return _refused("Your account may not use the contactsync console: ask for its app "
                            "role or group.")
        user = str(claims.get("preferred_username") or claims.get("name") or claims["sub"])
        response = RedirectResponse(str(flow["next"]), 303)
        response.set_cookie(SESSION_COOKIE, self.signer.sign({"user": user}, SESSION_SECONDS),
                            httponly=True, secure=True, samesite="lax", max_age=SESSION_SECONDS)
        response.delete_cookie(FLOW_COOKIE)
        return response

    async def _id_token(self, request: Request, code: str, flow: dict[str, Any]
                        ) -> dict[str, Any]:
        import jwt

        provider = await self._provider()
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self._redirect_uri(request), "client_id": self.settings.client_id,
                "code_verifier": flow["verifier"]}
        secret = self.settings.client_secret.get_secret_value()
        if secret:
            form["client_secret"] = secret
        async with httpx.AsyncClient(timeout=10) as client:
            token = await client.post(provider["token_endpoint"], data=form)
            token.raise_for_status()
            keys = await client.get(provider["jwks_uri"])
            keys.raise_for_status()
        id_token = token.json()["id_token"]
        kid = jwt.get_unverified_header(id_token).get("kid")
        jwk = next(k for k in keys.json()["keys"] if k.get("kid") == kid)
        claims: dict[str, Any] = jwt.decode(
            id_token, jwt.PyJWK(jwk).key, algorithms=["RS256"],
            audience=self.settings.client_id, issuer=provider["issuer"],
            options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        if not hmac.compare_digest(str(claims.get("nonce", "")), str(flow["nonce"])):
            raise ValueError("nonce mismatch")
        return claims

    def _allowed(self, claims: dict[str, Any]) -> bool:
        role, group = self.settings.required_role, self.settings.required_group
        return bool((role and role in claims.get("roles", []))
                    or (group and group in claims.get("groups", [])))

    def signout(self) -> Response:
        response = RedirectResponse("/signin", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response


def _refused(sentence: str) -> Response:
    return PlainTextResponse(sentence, status_code=403)


class RequireSignIn:
    """Every request but the sign-in itself needs a session: otherwise the sign-in redirect,
    never data (a POST is not carried out)."""

    def __init__(self, app: ASGIApp, signin: SignIn) -> None:
        self.app = app
        self.signin = signin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PUBLIC_PATHS):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        user = self.signin.user_of(request)
        if user is None:
            target = scope["path"] if request.method == "GET" else "/users"
            await RedirectResponse(f"/signin?{urlencode({'next': target})}", 303)(
                scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)
