"""The token endpoint of Microsoft Entra ID for the OAuth 2.0 client credentials grant.

Follows "Microsoft identity platform and the OAuth 2.0 client credentials flow"
(learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow):
`POST /{tenant}/oauth2/v2.0/token` with `client_id`, `client_secret` (or a `client_assertion`),
`scope`, `grant_type=client_credentials` answers `{"token_type": "Bearer", "expires_in",
"access_token"}`; an error answers `{"error", "error_description": "AADSTSnnnn: ...",
"error_codes": [nnnn], "timestamp", "trace_id", "correlation_id"}` (that page's "Error
response"; codes from "Microsoft Entra authentication and authorization error codes",
learn.microsoft.com/entra/identity-platform/reference-error-codes). MSAL first reads the
tenant's OpenID configuration ("OpenID Connect on the Microsoft identity platform",
learn.microsoft.com/entra/identity-platform/v2-protocols-oidc: `/{tenant}/v2.0/.well-known/
openid-configuration`).

Admin API (not Microsoft's): `POST /_emulator/refuse {"code": "7000222"}` makes every token
request fail with that code until `{"code": null}`; `POST /_emulator/outage {"requests": N}`
answers the next N token requests 503 `temporarily_unavailable` (RFC 6749 5.2);
`GET /_emulator/counters` counts issued and refused tokens.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# code -> (OAuth error, HTTP status, description): the codes an admin meets most.
REFUSALS: dict[str, tuple[str, int, str]] = {
    "7000222": ("invalid_client", 401, "The provided client secret keys for app are expired."),
    "7000215": ("invalid_client", 401, "Invalid client secret provided."),
    "700016": ("unauthorized_client", 400, "Application was not found in the directory."),
    "65001": ("invalid_grant", 400, "The user or administrator has not consented to use the "
                                    "application."),
    "90002": ("invalid_request", 400, "Tenant not found."),
}


@dataclass
class EntraEmulator:
    """`clients`: client id -> secret; an unknown client or a wrong secret is refused."""

    clients: dict[str, str] = field(default_factory=dict)
    refuse_code: str | None = None
    outage_requests: int = 0
    expires_in: int = 3599  # the page's example; a test shortens it to see tokens renewed
    counters: dict[str, int] = field(default_factory=lambda: {"issued": 0, "refused": 0,
                                                              "unavailable": 0})


def _error(code: str, tenant: str) -> JSONResponse:
    error, status, text = REFUSALS.get(code, ("invalid_request", 400, "Request refused."))
    now = datetime.now(UTC)
    return JSONResponse({
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {uuid.uuid4()} "
                             f"Correlation ID: {uuid.uuid4()} Timestamp: {now:%Y-%m-%d %H:%M:%SZ}",
        "error_codes": [int(code)],
        "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}",
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }, status)


def create_entra_app(emulator: EntraEmulator) -> Starlette:
    async def openid_configuration(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        base = str(request.base_url).rstrip("/")
        return JSONResponse({
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "issuer": f"{base}/{tenant}/v2.0",
            "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                      "private_key_jwt"],
        })

    async def token(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        # application/x-www-form-urlencoded (the page's request examples)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if emulator.outage_requests > 0:
            emulator.outage_requests -= 1
            emulator.counters["unavailable"] += 1
            return JSONResponse({"error": "temporarily_unavailable",
                                 "error_description": "The service is temporarily unavailable."},
                                503, headers={"Retry-After": "1"})
        client_id = str(form.get("client_id", ""))
        code = emulator.refuse_code
        if code is None and client_id not in emulator.clients:
            code = "700016"
        elif code is None and form.get("client_secret") is not None and (
                str(form.get("client_secret")) != emulator.clients[client_id]):
            code = "7000215"
        if code is not None:
            emulator.counters["refused"] += 1
            return _error(code, tenant)
        emulator.counters["issued"] += 1
        return JSONResponse({"token_type": "Bearer", "expires_in": emulator.expires_in,
                             "ext_expires_in": emulator.expires_in,
                             "access_token": "emulated." + secrets.token_urlsafe(24)})

    async def refuse(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        emulator.refuse_code = body.get("code")
        return JSONResponse({"code": emulator.refuse_code})

    async def outage(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        emulator.outage_requests = int(body.get("requests", 0))
        return JSONResponse({"requests": emulator.outage_requests})

    async def counters(_request: Request) -> Response:
        return JSONResponse(emulator.counters)

    return Starlette(routes=[
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        Route("/_emulator/refuse", refuse, methods=["POST"]),
        Route("/_emulator/outage", outage, methods=["POST"]),
        Route("/_emulator/counters", counters),
    ])
