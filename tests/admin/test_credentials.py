"""CONTACTSYNC_AZURE_CREDENTIAL: each kind builds azure-identity's class for it, one credential
serves Graph and BC, and a missing or refused credential is one sentence naming what to set.

Tokens come from a real local token endpoint (tests/entra_fixtures.py: TLS on loopback, as
azure-identity accepts only an https authority) through the real azure-identity classes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from contactsync import metrics
from contactsync.clients.errors import CredentialRejected
from contactsync.credential_health import HEALTH
from contactsync.credentials import CredentialSetupError, build_credential
from contactsync.emulators.entra import local_certificate
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.settings import Settings
from contactsync.sync.services import open_services
from tests.entra_fixtures import SECRET, Entra, entra

__all__ = ["entra"]

AZURE_VARS = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
              "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE",
              "AZURE_AUTHORITY_HOST", "CONTACTSYNC_AZURE_CREDENTIAL")
TENANT_URLS = {"graph_base_url": "https://graph.microsoft.com/v1.0",
               "bc_base_url": "https://api.businesscentral.dynamics.com/v2.0/t/production/api/v2.0",
               "bc_company": "CRONUS"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AZURE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no `az` on it
    return monkeypatch


def contactsync(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed command, in a process of its own, with this process's environment."""
    return subprocess.run([str(Path(sys.executable).parent / "contactsync"), *args],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))


def settings_for(kind: str, **urls: str) -> Settings:
    return Settings(azure_credential=kind, **(urls or TENANT_URLS))


@pytest.fixture
def emulators() -> Iterator[RunningEmulators]:
    running = start_emulators()
    running.graph.add_user("user1@contoso.test")
    try:
        yield running
    finally:
        running.stop()


def _pem_with_key(tmp_path: Path) -> Path:
    cert = local_certificate(tmp_path / "cert")
    both = tmp_path / "app.pem"
    both.write_bytes(cert.key_path.read_bytes() + cert.cert_path.read_bytes())
    return both


def test_each_kind_builds_the_azure_identity_class_it_names(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("AZURE_TENANT_ID", "t")
    clean_env.setenv("AZURE_CLIENT_ID", "c")
    clean_env.setenv("AZURE_CLIENT_SECRET", "s")
    clean_env.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(_pem_with_key(tmp_path)))
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.fake.jwt")
    clean_env.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    expected = {"secret": "ClientSecretCredential", "certificate": "CertificateCredential",
                "workload-identity": "WorkloadIdentityCredential",
                "managed-identity": "ManagedIdentityCredential",
                "environment": "EnvironmentCredential", "auto": "DefaultAzureCredential"}
    for kind, class_name in expected.items():
        credential = build_credential(settings_for(kind))
        assert credential is not None
        assert type(credential.inner).__name__ == class_name, kind


def test_auto_against_the_emulators_without_an_app_stays_anonymous(
        clean_env: pytest.MonkeyPatch) -> None:
    local = {"graph_base_url": "http://127.0.0.1:1/v1.0",
             "bc_base_url": "http://127.0.0.1:2/api/v2.0", "bc_company": "x"}
    assert build_credential(settings_for("auto", **local)) is None
    assert build_credential(settings_for("managed-identity", **local)) is not None


@pytest.mark.parametrize(("kind", "env", "sentence"), [
    ("secret", {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"},
     "CONTACTSYNC_AZURE_CREDENTIAL=secret needs AZURE_CLIENT_SECRET: set it"),
    ("workload-identity", {},
     "needs AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE: set them"),
    ("certificate", {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c",
                     "AZURE_CLIENT_CERTIFICATE_PATH": "/nonexistent/app.pem"},
     "AZURE_CLIENT_CERTIFICATE_PATH=/nonexistent/app.pem is not a readable file"),
    ("azure-cli", {}, "needs the Azure CLI: install it and run `az login`"),
    ("kerberos", {}, "is not a credential kind: set it to one of auto, secret, certificate"),
])
def test_a_missing_setting_is_one_sentence_naming_it(
        clean_env: pytest.MonkeyPatch, kind: str, env: dict[str, str], sentence: str) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(CredentialSetupError) as caught:
        build_credential(settings_for(kind))
    assert sentence in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_says_what_to_set_without_a_traceback(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {"CONTACTSYNC_AZURE_CREDENTIAL": "secret", "AZURE_TENANT_ID": "t",
                        "AZURE_CLIENT_ID": "c",
                        "CONTACTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
                        **{f"CONTACTSYNC_{k.upper()}": v for k, v in TENANT_URLS.items()}
                        }.items():
        clean_env.setenv(name, value)
    result = contactsync("users", "add", "user1@contoso.test")  # it asks Graph for the mailbox
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: CONTACTSYNC_AZURE_CREDENTIAL=secret needs AZURE_CLIENT_SECRET: set it for the "
        "app registration (see README 'Using a real tenant')"]


async def test_one_credential_serves_graph_and_bc(
        entra: Entra, emulators: RunningEmulators) -> None:
    settings = settings_for("secret", graph_base_url=emulators.graph_base_url,
                            bc_base_url=emulators.bc_base_url,
                            bc_company=emulators.bc.company_id)
    async with open_services(settings) as services:
        for _ in range(3):
            await services.graph.list_folders("user1@contoso.test")
            await services.bc.list_companies()
    # One token per scope for every request of both clients: one credential, one cache.
    assert entra.emulator.counters["issued"] == 2
    assert HEALTH.readiness() == (True, "credential ok")


async def test_a_refused_secret_names_the_fix(
        entra: Entra, emulators: RunningEmulators) -> None:
    entra.emulator.refuse_code = "7000222"
    settings = settings_for("secret", graph_base_url=emulators.graph_base_url,
                            bc_base_url=emulators.bc_base_url,
                            bc_company=emulators.bc.company_id)
    with pytest.raises(CredentialRejected) as caught:
        async with open_services(settings):
            pass
    assert str(caught.value) == (
        "Microsoft Entra ID refused the secret credential for bc (AADSTS7000222): the client "
        "secret has expired: create a new one in the app registration and set "
        "AZURE_CLIENT_SECRET")
    ready, why = HEALTH.readiness()
    assert not ready and "AADSTS7000222" in why


def test_run_refuses_an_unknown_kind_before_starting_any_role(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {"CONTACTSYNC_AZURE_CREDENTIAL": "password",
                        "CONTACTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
                        **{f"CONTACTSYNC_{k.upper()}": v for k, v in TENANT_URLS.items()}
                        }.items():
        clean_env.setenv(name, value)
    result = contactsync("run")
    assert result.returncode == 1 and "running" not in result.stdout
    assert result.stderr.strip().splitlines() == [
        "error: CONTACTSYNC_AZURE_CREDENTIAL='password' is not a credential kind: set it to one "
        "of auto, secret, certificate, workload-identity, managed-identity, azure-cli, "
        "environment"]


async def test_a_refusal_is_logged_once_a_minute_and_counted_every_time(
        entra: Entra, emulators: RunningEmulators, capsys: pytest.CaptureFixture[str]) -> None:
    entra.emulator.refuse_code = "7000222"
    settings = settings_for("secret", graph_base_url=emulators.graph_base_url,
                            bc_base_url=emulators.bc_base_url,
                            bc_company=emulators.bc.company_id)
    credential = build_credential(settings)
    assert credential is not None
    for _ in range(5):
        with pytest.raises(CredentialRejected):
            await credential.get_token(settings.graph_scope)
    await credential.close()
    logged = [line for line in capsys.readouterr().out.splitlines()
              if "Azure credential failed" in line]
    assert len(logged) == 1 and "AADSTS7000222" in logged[0]
    assert SECRET not in logged[0]
    failures = metrics.REGISTRY.get_sample_value("contactsync_credential_failures_total",
                                                 {"service": "graph"})
    assert failures is not None and failures >= 5
    assert not HEALTH.readiness()[0]


def test_a_refusal_reaches_the_admin_as_its_one_sentence(
        entra: Entra, emulators: RunningEmulators, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    entra.emulator.refuse_code = "65001"  # consent revoked
    for name, value in {"CONTACTSYNC_GRAPH_BASE_URL": emulators.graph_base_url,
                        "CONTACTSYNC_BC_BASE_URL": emulators.bc_base_url,
                        "CONTACTSYNC_BC_COMPANY": emulators.bc.company_id,
                        "CONTACTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}"}.items():
        monkeypatch.setenv(name, value)
    result = contactsync("users", "add", "user1@contoso.test")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: Microsoft Entra ID refused the secret credential for ")
    assert line.endswith("(AADSTS65001): the app has no admin consent: grant admin consent to "
                         "its API permissions")
