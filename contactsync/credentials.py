"""The Azure credential: which kind, built once, shared by the Graph and BC clients.

`CONTACTSYNC_AZURE_CREDENTIAL` picks the kind; azure-identity reads its own standard variables
(https://learn.microsoft.com/python/api/overview/azure/identity-readme, "Environment
variables"), so secrets never pass through our settings or logs:

    secret             ClientSecretCredential      AZURE_TENANT_ID, AZURE_CLIENT_ID,
                                                   AZURE_CLIENT_SECRET
    certificate        CertificateCredential       AZURE_TENANT_ID, AZURE_CLIENT_ID,
                                                   AZURE_CLIENT_CERTIFICATE_PATH [_PASSWORD]
    workload-identity  WorkloadIdentityCredential  AZURE_TENANT_ID, AZURE_CLIENT_ID,
                                                   AZURE_FEDERATED_TOKEN_FILE (AKS injects them)
    managed-identity   ManagedIdentityCredential   [AZURE_CLIENT_ID of a user-assigned identity]
    azure-cli          AzureCliCredential          `az login` on a developer's machine
    environment        EnvironmentCredential       a secret or a certificate, as the variables say
    auto               DefaultAzureCredential limited to the kinds above, in its order

A missing or wrong setting is a `CredentialSetupError`: one sentence naming what to set.

`SharedCredential` wraps the azure-identity credential (a sync one: thread-safe, so one token
cache serves every client, called off the event loop) and turns what azure-core raises while
getting a token into the client error tree: a transient failure (Entra unreachable, 5xx) is
`TokenUnavailable` (retryable), a refusal (expired secret, consent revoked, unknown app) is
`CredentialRejected` (the role pauses; see `contactsync.credential_health`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contactsync.clients.bc import is_loopback_url
from contactsync.clients.errors import CredentialRejected, TokenUnavailable
from contactsync.credential_health import HEALTH, CredentialHealth
from contactsync.settings import ConfigError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

    from contactsync.settings import Settings

KINDS = ("auto", "secret", "certificate", "workload-identity", "managed-identity", "azure-cli",
         "environment")
SETTING = "CONTACTSYNC_AZURE_CREDENTIAL"
GUIDE = "see README 'Using a real tenant'"
TOKEN_REFRESH_MARGIN = 300.0  # seconds before expiry a cached token is fetched again
# azure-core's own retries (10 by default, 0.8 s doubling) would hide an outage for minutes;
# our clients and workers retry with their own backoff, so one retry here is enough.
RETRY_TOTAL = 1

# azure-identity logs a warning at every failed attempt; `CredentialHealth` logs once a minute.
logging.getLogger("azure.identity").setLevel(logging.ERROR)

_REQUIRED = {
    "secret": ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"),
    "certificate": ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_CERTIFICATE_PATH"),
    "workload-identity": ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"),
    "environment": ("AZURE_TENANT_ID", "AZURE_CLIENT_ID"),
}
_FILES = ("AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE")


class CredentialSetupError(ConfigError):
    """The credential cannot be built from the settings; the message says what to set."""


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def credential_kind(settings: Settings) -> str:
    kind = settings.azure_credential.strip().lower()
    if kind not in KINDS:
        raise CredentialSetupError(
            f"{SETTING}={settings.azure_credential!r} is not a credential kind: set it to one "
            f"of {', '.join(KINDS)}")
    return kind


def needs_credential(settings: Settings) -> bool:
    """Emulators on loopback take no token; `auto` then stays anonymous unless an Azure app is
    configured. A named kind is always built (that is how a test points it at a local
    token endpoint)."""
    if credential_kind(settings) != "auto":
        return True
    urls = [u for u in (settings.graph_base_url, settings.bc_base_url) if u]
    if urls and all(is_loopback_url(u) for u in urls):
        return bool(_env("AZURE_CLIENT_ID"))
    return True


def check_environment(kind: str) -> None:
    """The variables `kind` reads, present and pointing at files that exist."""
    missing = [name for name in _REQUIRED.get(kind, ()) if not _env(name)]
    if kind == "environment" and not (_env("AZURE_CLIENT_SECRET")
                                      or _env("AZURE_CLIENT_CERTIFICATE_PATH")):
        missing.append("AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH)")
    if missing:
        raise CredentialSetupError(
            f"{SETTING}={kind} needs {', '.join(missing)}: set "
            f"{'it' if len(missing) == 1 else 'them'} for the app registration ({GUIDE})")
    for name in _FILES:
        if name in _REQUIRED.get(kind, ()) and not Path(_env(name)).is_file():
            raise CredentialSetupError(
                f"{name}={_env(name)} is not a readable file: set it to the path of the "
                f"{'certificate (PEM or PKCS12)' if 'CERT' in name else 'federated token'}")
    if kind == "azure-cli" and shutil.which("az") is None:
        raise CredentialSetupError(
            f"{SETTING}=azure-cli needs the Azure CLI: install it and run `az login`, or set "
            f"{SETTING} to the kind this machine has")


def _authority_options() -> dict[str, Any]:
    """A loopback AZURE_AUTHORITY_HOST is a local token endpoint (tests), not a Microsoft cloud:
    MSAL must not ask login.microsoftonline.com to validate it."""
    host = _env("AZURE_AUTHORITY_HOST")
    return {"disable_instance_discovery": True} if host and is_loopback_url(host) else {}


def _build_inner(kind: str) -> TokenCredential:
    from azure import identity

    common: dict[str, Any] = {"retry_total": RETRY_TOTAL}
    if kind == "secret":
        return identity.ClientSecretCredential(
            _env("AZURE_TENANT_ID"), _env("AZURE_CLIENT_ID"), _env("AZURE_CLIENT_SECRET"),
            **common, **_authority_options())
    if kind == "certificate":
        return identity.CertificateCredential(
            _env("AZURE_TENANT_ID"), _env("AZURE_CLIENT_ID"),
            certificate_path=_env("AZURE_CLIENT_CERTIFICATE_PATH"),
            password=_env("AZURE_CLIENT_CERTIFICATE_PASSWORD") or None,
            **common, **_authority_options())
    if kind == "workload-identity":
        return identity.WorkloadIdentityCredential(**common, **_authority_options())
    if kind == "managed-identity":  # IMDS has its own retry rules: azure-identity's defaults
        return identity.ManagedIdentityCredential(client_id=_env("AZURE_CLIENT_ID") or None)
    if kind == "azure-cli":
        return identity.AzureCliCredential(tenant_id=_env("AZURE_TENANT_ID"))
    if kind == "environment":
        return identity.EnvironmentCredential(**common, **_authority_options())
    # auto: azure-identity's own chain, limited to the kinds above (no developer tools that
    # open a browser or read an IDE's cache: a service must not depend on them).
    return identity.DefaultAzureCredential(
        exclude_shared_token_cache_credential=True, exclude_visual_studio_code_credential=True,
        exclude_developer_cli_credential=True, exclude_powershell_credential=True,
        exclude_interactive_browser_credential=True, exclude_broker_credential=True,
        managed_identity_client_id=_env("AZURE_CLIENT_ID") or None)


def check_credential_settings(settings: Settings) -> None:
    """What `build_credential` would refuse, without building anything (a command's start)."""
    if needs_credential(settings):
        check_environment(credential_kind(settings))


def build_credential(settings: Settings, *,
                     health: CredentialHealth = HEALTH) -> SharedCredential | None:
    """The credential the settings ask for, or None for emulators that take no token."""
    if not needs_credential(settings):
        return None
    names = {settings.graph_scope: "graph", settings.bc_scope: "bc"}
    return SharedCredential(build_sync_credential(settings), credential_kind(settings), names,
                            health=health)


def build_sync_credential(settings: Settings) -> TokenCredential:
    """The azure-identity credential the settings name, as the sync object azure-identity
    builds: the Graph and BC clients wrap it (SharedCredential), Kafka's OAUTHBEARER token
    provider calls it directly, so all three authenticate as one identity."""
    kind = credential_kind(settings)
    check_environment(kind)
    try:
        return _build_inner(kind)
    except ValueError as exc:  # azure-identity's own checks: a bad certificate, authority...
        raise CredentialSetupError(
            f"{SETTING}={kind} cannot be used: {_first_line(str(exc))} ({GUIDE})") from None


# ---- token failures -> the error tree ---------------------------------------------------------

_AADSTS = re.compile(r"AADSTS(\d+)")
# Entra's codes (https://learn.microsoft.com/entra/identity-platform/reference-error-codes)
# that an admin must fix, with the fix.
_FIXES = {
    "7000222": "the client secret has expired: create a new one in the app registration and "
               "set AZURE_CLIENT_SECRET",
    "7000215": "the client secret is wrong: set AZURE_CLIENT_SECRET to the secret's Value "
               "(not its ID)",
    "700016": "no app with this AZURE_CLIENT_ID in the tenant: set AZURE_CLIENT_ID and "
              "AZURE_TENANT_ID to the app registration's ids",
    "90002": "the tenant was not found: set AZURE_TENANT_ID to the directory (tenant) id",
    "900023": "the tenant id is malformed: set AZURE_TENANT_ID to the directory (tenant) id",
    "65001": "the app has no admin consent: grant admin consent to its API permissions",
    "500011": "the API is not available to the app in this tenant: add its permission to the "
              "app registration and grant admin consent",
    "7000112": "the app registration is disabled: enable it",
    "700027": "the certificate is not one of the app registration's: upload it under "
              "Certificates & secrets or set AZURE_CLIENT_CERTIFICATE_PATH",
    "70021": "no federated credential matches: add one for this workload's service account",
    "700213": "no federated credential matches: add one for this workload's service account",
    "70011": "the scope is not valid: check CONTACTSYNC_GRAPH_SCOPE / CONTACTSYNC_BC_SCOPE",
    "53003": "a Conditional Access policy blocks the app: exclude it or allow its location",
}
_TRANSIENT_OAUTH = ("temporarily_unavailable", "server_error")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


_HTTP_ERROR = re.compile(r"HTTP Error: (\d{3})")  # how MSAL words a 5xx it throttles


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    match = _HTTP_ERROR.search(str(exc))
    return int(match.group(1)) if match else None


def token_failure(exc: BaseException, scope: str,
                  kind: str) -> TokenUnavailable | CredentialRejected:
    """What azure-core / azure-identity raised while getting a token, as the error tree: the
    message is one sentence naming what to do, and never holds a secret or a token."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.identity import CredentialUnavailableError

    text = str(exc)
    status = _status_of(exc)
    codes = _AADSTS.findall(text)
    if isinstance(exc, ServiceRequestError | ServiceResponseError | OSError | TimeoutError) or (
            isinstance(exc, ClientAuthenticationError) and not codes
            and ((status is not None and (status >= 500 or status == 429))
                 or any(code in text for code in _TRANSIENT_OAUTH))):
        return TokenUnavailable(
            f"no {scope} token for now (Microsoft Entra ID unreachable or busy: "
            f"{type(exc).__name__}); retrying", service="entra", code="TokenUnavailable")
    for code in codes:
        if code in _FIXES:
            return CredentialRejected(f"Microsoft Entra ID refused the {kind} credential for "
                                      f"{scope} (AADSTS{code}): {_FIXES[code]}",
                                      service="entra", code=f"AADSTS{code}")
    if isinstance(exc, CredentialUnavailableError):
        return CredentialRejected(
            f"the {kind} credential is not available here ({_first_line(text)[:200]}): set "
            f"{SETTING} to the kind this machine has and its AZURE_* variables ({GUIDE})",
            service="entra", code="CredentialUnavailable")
    code = f"AADSTS{codes[0]}" if codes else "invalid_client"
    return CredentialRejected(
        f"Microsoft Entra ID refused the {kind} credential for {scope} ({code}): check "
        f"AZURE_TENANT_ID, AZURE_CLIENT_ID and the secret or certificate ({GUIDE})",
        service="entra", code=code)


class SharedCredential:
    """An async credential (what msgraph's kiota and our BC client take) over one sync
    azure-identity credential. Tokens are cached per scope until five minutes before expiry;
    every outcome is reported to the process's `CredentialHealth` (readiness, metrics, logs)."""

    def __init__(self, inner: TokenCredential, kind: str, scope_names: Mapping[str, str],
                 *, health: CredentialHealth = HEALTH) -> None:
        self.inner = inner
        self.kind = kind
        self._names = dict(scope_names)
        self._health = health
        self._tokens: dict[tuple[str, ...], AccessToken] = {}

    def scope_name(self, scope: str) -> str:
        return self._names.get(scope, scope)

    async def get_token(self, *scopes: str, claims: str | None = None,
                        tenant_id: str | None = None, **_: Any) -> AccessToken:
        cached = self._tokens.get(scopes)
        if claims is None and cached is not None and (
                cached.expires_on - time.time() > TOKEN_REFRESH_MARGIN):
            return cached
        name = self.scope_name(scopes[0] if scopes else "")
        extra: dict[str, Any] = {"claims": claims} if claims else {}
        if tenant_id:
            extra["tenant_id"] = tenant_id
        try:
            token = await asyncio.to_thread(self.inner.get_token, *scopes, **extra)
        except Exception as exc:  # azure-core's, azure-identity's, a transport's
            error = token_failure(exc, name, self.kind)
            self._health.failed(name, error)
            raise error from None
        self._health.succeeded(name)
        self._tokens[scopes] = token
        return token

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)  # every azure-identity credential has one
        if close is not None:
            await asyncio.to_thread(close)

    async def __aenter__(self) -> SharedCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
