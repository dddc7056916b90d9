"""`contactsync doctor` as an admin runs it (a process of its own) against the emulators, the
session's Kafka broker and a running webhook: all ok exits 0; each check, provoked to fail
once, says why and what to do, and the command exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from contactsync.emulators.running import RunningEmulators
from contactsync.http_server import BackgroundServer
from contactsync.producers.webhook import StoreRegistry, create_webhook_app
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.db import create_db_engine
from contactsync.store.migrations import migrate
from tests.entra_fixtures import Entra, entra
from tests.kafka_fixtures import role_env, start_tenant
from tests.store.legacy import mark_sharing

__all__ = ["entra"]
pytestmark = pytest.mark.kafka

MAILBOX = "user1@contoso.test"
PASSED_ON = ("PATH", "HOME", "LANG", "TMPDIR", "XDG_CACHE_HOME", "REQUESTS_CA_BUNDLE",
             "AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")


@dataclass
class Deployment:
    settings: Settings
    emulators: RunningEmulators
    store: Store
    webhook_url: str

    def env(self, **changes: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in PASSED_ON}
        env.update(role_env(self.settings))
        env["CONTACTSYNC_WEBHOOK_PUBLIC_URL"] = self.webhook_url
        env.update(changes)
        return env

    def doctor(self, *args: str, **env: str) -> tuple[int, dict[str, tuple[bool, str]]]:
        """Exit code and {check: (ok, detail)} of `contactsync doctor --json`."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "contactsync"), "doctor", "--json", *args],
            capture_output=True, text=True, timeout=120, env=self.env(**env))
        assert "Traceback" not in done.stderr, done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] is (done.returncode == 0)
        return done.returncode, {c["name"]: (c["ok"], c["detail"]) for c in report["checks"]}


@pytest.fixture
def deployment(kafka_settings: Settings) -> Iterator[Deployment]:
    settings, emulators = start_tenant(kafka_settings, MAILBOX)
    store = Store.open(settings.database_url)
    store.setups.add(UserSetup(user_id=MAILBOX, mailbox=MAILBOX))
    webhook = BackgroundServer(create_webhook_app(settings, StoreRegistry(store))).start()
    try:
        yield Deployment(settings, emulators, store, webhook.url)
    finally:
        webhook.stop()
        store.close()
        emulators.stop()


def failing(checks: dict[str, tuple[bool, str]]) -> dict[str, str]:
    return {name: detail for name, (ok, detail) in checks.items() if not ok}


def test_a_ready_deployment_passes_every_check(deployment: Deployment) -> None:
    code, checks = deployment.doctor("--write-test")
    assert failing(checks) == {} and code == 0
    assert list(checks) == ["settings", "token graph", "token bc", f"graph {MAILBOX}", "bc",
                            "public url", "kafka", "database", "setups"]
    assert "created and removed" in checks[f"graph {MAILBOX}"][1]
    folders = httpx.get(f"{deployment.emulators.graph_base_url}/users/{MAILBOX}/contactFolders")
    scratch = [f for f in folders.json()["value"] if f["displayName"] == "contactsync doctor"]
    assert [deployment.emulators.graph.contacts(MAILBOX, f["id"]) for f in scratch] == [[]]


def test_incomplete_settings(deployment: Deployment) -> None:
    code, checks = deployment.doctor(CONTACTSYNC_BC_COMPANY="")
    assert code == 1
    assert failing(checks)["settings"] == (
        "CONTACTSYNC_BC_COMPANY not set: set it to your tenant's values")
    assert failing(checks)["graph"] == "skipped: the settings are incomplete"


def test_a_refused_token(deployment: Deployment, entra: Entra) -> None:
    entra.emulator.refuse_code = "65001"  # consent revoked
    code, checks = deployment.doctor(CONTACTSYNC_AZURE_CREDENTIAL="secret")
    assert code == 1
    assert "AADSTS65001" in failing(checks)["token graph"]
    assert "grant admin consent" in failing(checks)["token bc"]
    entra.emulator.refuse_code = None
    code, checks = deployment.doctor(CONTACTSYNC_AZURE_CREDENTIAL="secret")
    assert failing(checks) == {} and code == 0
    assert checks["token graph"] == (True, "secret credential accepted")


def test_a_mailbox_graph_does_not_know(deployment: Deployment) -> None:
    deployment.store.setups.add(UserSetup(user_id="ghost", mailbox="ghost@contoso.test"))
    code, checks = deployment.doctor("--user", "ghost")
    assert code == 1 and list(failing(checks)) == ["graph ghost"]
    assert "404" in failing(checks)["graph ghost"]


def test_bc_company_and_webhook_support(deployment: Deployment) -> None:
    code, checks = deployment.doctor(CONTACTSYNC_BC_COMPANY="Nope Ltd")
    assert code == 1 and "'Nope Ltd' not found" in failing(checks)["bc"]
    deployment.emulators.bc.config.webhooks_supported = False
    code, checks = deployment.doctor()
    assert code == 1 and "offers no webhooks on contacts" in failing(checks)["bc"]


def test_public_url(deployment: Deployment) -> None:
    code, checks = deployment.doctor(CONTACTSYNC_WEBHOOK_PUBLIC_URL="http://sync.contoso.test")
    assert code == 1 and "is not https" in failing(checks)["public url"]
    code, checks = deployment.doctor(CONTACTSYNC_WEBHOOK_PUBLIC_URL="http://127.0.0.1:9")
    assert code == 1 and "did not answer" in failing(checks)["public url"]


def test_kafka_unreachable_or_without_topics(deployment: Deployment) -> None:
    code, checks = deployment.doctor(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    assert code == 1 and "no Kafka broker answers at 127.0.0.1:9" in failing(checks)["kafka"]
    code, checks = deployment.doctor(CONTACTSYNC_TOPIC_PREFIX="never-ensured.")
    assert code == 1 and "run `contactsync topics ensure`" in failing(checks)["kafka"]


def test_an_old_database_schema(deployment: Deployment, tmp_path: Path) -> None:
    old = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_db_engine(old)
    migrate(engine, target=1)
    engine.dispose()
    code, checks = deployment.doctor(CONTACTSYNC_DATABASE_URL=old)
    assert code == 1 and "schema version 1, this code expects" in failing(checks)["database"]


def test_two_setups_on_one_folder(deployment: Deployment) -> None:
    deployment.store.setups.add(UserSetup(user_id="twin", mailbox="twin@contoso.test"))
    mark_sharing(deployment.store, "twin", MAILBOX)  # as an older version let it be stored
    code, checks = deployment.doctor("--user", MAILBOX)
    assert code == 1 and list(failing(checks)) == ["setups"]
    assert failing(checks)["setups"] == (
        f"twin shares folder 'Business Central' of {MAILBOX.upper()} with {MAILBOX}, so it is "
        "stopped: give it another folder (`contactsync users set USER --folder NAME`) or "
        "remove it")
