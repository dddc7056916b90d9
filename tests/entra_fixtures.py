"""A local Entra ID token endpoint over TLS, and the AZURE_* variables pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contactsync.credential_health import HEALTH
from contactsync.emulators.entra import EntraEmulator, create_entra_app, local_certificate
from contactsync.http_server import BackgroundServer

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SECRET = "not-a-real-secret-0123456789"


@dataclass
class Entra:
    emulator: EntraEmulator
    url: str
    ca_file: Path


@pytest.fixture
def entra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Entra]:
    """Entra answering for one app with a client secret; the process's environment set up for
    CONTACTSYNC_AZURE_CREDENTIAL=secret (sync azure-identity trusts REQUESTS_CA_BUNDLE)."""
    cert = local_certificate(tmp_path / "tls")
    emulator = EntraEmulator(clients={CLIENT_ID: SECRET})
    server = BackgroundServer(create_entra_app(emulator),
                              tls=(str(cert.cert_path), str(cert.key_path))).start()
    for name, value in {"REQUESTS_CA_BUNDLE": str(cert.cert_path),
                        "AZURE_AUTHORITY_HOST": server.url, "AZURE_TENANT_ID": TENANT,
                        "AZURE_CLIENT_ID": CLIENT_ID, "AZURE_CLIENT_SECRET": SECRET,
                        "CONTACTSYNC_AZURE_CREDENTIAL": "secret"}.items():
        monkeypatch.setenv(name, value)
    HEALTH.reset()
    try:
        yield Entra(emulator, server.url, cert.cert_path)
    finally:
        server.stop()
        HEALTH.reset()
