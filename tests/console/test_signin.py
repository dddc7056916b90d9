"""Entra ID sign-in (OIDC authorization code + PKCE) against a small local issuer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from contactsync.console.app import create_console_app
from contactsync.console.signin import SESSION_COOKIE, SignInSettings
from contactsync.settings import Settings
from contactsync.store import Store
from tests.console.oidc_issuer import Issuer, serve
from tests.console.test_actions import _confirmed, _console_actions
from tests.console.test_console_cli import EXE

CLIENT_ID = "console-client-id"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    running, server, thread = serve(CLIENT_ID)
    yield running
    server.should_exit = True
    thread.join(timeout=10)


def _sign_in_settings(issuer: Issuer, **overrides: str) -> SignInSettings:
    values = {"oidc_issuer": issuer.url, "client_id": CLIENT_ID,
              "required_role": "ContactSync.Admin", **overrides}
    return SignInSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def console(issuer: Issuer, store: Store) -> Iterator[TestClient]:
    app = create_console_app(Settings(database_url=str(store.engine.url)), store,
                             sign_in=_sign_in_settings(issuer))
    # https: the session cookie is Secure, so a browser sends it over https only
    with TestClient(app, base_url="https://console.test", follow_redirects=False) as client:
        yield client


def _sign_in(console: TestClient, start: str = "/users") -> httpx.Response:
    """Follow the redirects a browser follows: console -> issuer -> console callback."""
    to_signin = console.get(start)
    assert to_signin.status_code == 303 and to_signin.headers["location"].startswith("/signin")
    to_issuer = console.get(to_signin.headers["location"])
    assert to_issuer.status_code == 302
    back = httpx.get(to_issuer.headers["location"], follow_redirects=False)
    assert back.status_code == 302
    callback = urlsplit(back.headers["location"])
    return console.get(f"{callback.path}?{callback.query}")


def test_no_session_gets_the_sign_in_redirect_never_data(console: TestClient, store: Store):
    for path in ("/users", "/users/alice@contoso.com", "/deadletters", "/health",
                 "/filter-check?field=city&expression=x"):
        answer = console.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/signin?next=")
        assert "alice" not in answer.text
    action = console.post("/users/alice@contoso.com/act",
                          data={"action": "disable", "confirmed": "yes"})
    assert action.status_code == 303 and action.headers["location"].startswith("/signin")
    assert store.setups.require("alice@contoso.com").enabled is True


def test_sign_in_with_the_app_role_then_act_as_that_person(console: TestClient, store: Store,
                                                           issuer: Issuer):
    done = _sign_in(console, "/users/alice@contoso.com")
    assert done.status_code == 303 and done.headers["location"] == "/users/alice@contoso.com"
    assert issuer.pkce_checked == 1  # the token endpoint saw the verifier of the challenge
    cookie = next(c for c in done.headers.get_list("set-cookie")
                  if c.startswith(SESSION_COOKIE + "="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite=lax"} <= flags

    page = console.get("/users")
    assert page.status_code == 200 and "admin@contoso.test" in page.text
    acted = console.post("/users/alice@contoso.com/act",
                         data=_confirmed(console, "alice@contoso.com", "disable"))
    assert acted.status_code == 303
    assert _console_actions(store, "alice@contoso.com") == [
        {"action": "disable", "by": "admin@contoso.test"}]


def test_an_account_without_the_role_or_group_is_refused(console: TestClient, issuer: Issuer):
    issuer.account.roles = ["Something.Else"]
    refused = _sign_in(console)
    assert refused.status_code == 403
    assert "may not use the contactsync console" in refused.text
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    assert console.get("/users").status_code == 303


def test_a_group_named_in_settings_lets_its_members_in(issuer: Issuer, store: Store):
    issuer.account.roles, issuer.account.groups = [], ["group-object-id-1"]
    app = create_console_app(Settings(database_url=str(store.engine.url)), store,
                             sign_in=_sign_in_settings(issuer, required_role="",
                                                       required_group="group-object-id-1"))
    with TestClient(app, base_url="https://console.test", follow_redirects=False) as client:
        assert _sign_in(client).status_code == 303
        assert client.get("/users").status_code == 200


def test_a_forged_token_or_a_foreign_state_gets_no_session(console: TestClient,
                                                           issuer: Issuer):
    issuer.wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = _sign_in(console)
    assert forged.status_code == 403 and "could not be verified" in forged.text
    issuer.wrong_key = None

    to_issuer = console.get(console.get("/users").headers["location"])
    back = urlsplit(httpx.get(to_issuer.headers["location"]).headers["location"])
    foreign = console.get(f"{back.path}?code=stolen&state=not-ours")
    assert foreign.status_code == 403 and "did not start here" in foreign.text
    assert console.get("/users").status_code == 303


def test_the_cli_listens_beyond_loopback_only_with_sign_in_and_a_role(tmp_path: Path):
    env = {"CONTACTSYNC_CONSOLE_OIDC_ISSUER": "https://login.example.test/t/v2.0",
           "CONTACTSYNC_CONSOLE_CLIENT_ID": "c", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([EXE, "console", "--host", "0.0.0.0"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env=env, check=False)
    assert run.returncode == 1
    assert "set CONTACTSYNC_CONSOLE_REQUIRED_ROLE (an app role)" in run.stderr
