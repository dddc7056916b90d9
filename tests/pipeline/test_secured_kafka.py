"""The pipeline on a secured broker, as operators run Kafka: SASL_SSL with SCRAM-SHA-512 and a
certificate from a CA made at test time. Every client (admin, producers, consumers) goes through
the same configuration; a wrong password is one sentence, not a hang."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from contactsync.kafka.errors import BrokerError
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at, topic_name
from contactsync.settings import Settings
from tests.kafka_fixtures import SecuredKafka
from tests.pipeline.test_end_to_end import ANNA, BEN, eventually, running_system

pytestmark = pytest.mark.kafka

CONTACTSYNC = str(Path(sys.executable).with_name("contactsync"))


def _settings(secured: SecuredKafka, tmp_path: Path, **overrides: object) -> Settings:
    env = secured.env()
    return Settings(
        kafka_bootstrap_servers=secured.bootstrap,
        kafka_security_protocol=env["CONTACTSYNC_KAFKA_SECURITY_PROTOCOL"],
        kafka_sasl_mechanism=env["CONTACTSYNC_KAFKA_SASL_MECHANISM"],
        kafka_sasl_username=secured.user, kafka_sasl_password=secured.password,
        kafka_ssl_cafile=secured.ca_file, topic_prefix="secured.", topic_partitions=3,
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        kafka_data_dir=tmp_path / "kafka-unused", **overrides)


def test_the_whole_pipeline_runs_on_a_sasl_ssl_scram_broker(secured_kafka: SecuredKafka,
                                                            tmp_path: Path):
    # The password comes from a mounted file, as a Kubernetes or compose secret gives it.
    secret = tmp_path / "kafka-password"
    secret.write_text(secured_kafka.password + "\n")
    settings = _settings(secured_kafka, tmp_path).model_copy(update={
        "kafka_sasl_password": None, "kafka_sasl_password_file": secret})
    with running_system(settings) as system:
        # BC -> change feed -> router -> applier -> Outlook, for each user the filter matches.
        sea = system.bc_by_email()["sea1@example.com"]
        system.emulators.bc.update_contact(sea["id"], {"jobTitle": "Buyer"})
        eventually(lambda: system.folder(ANNA)["sea1@example.com"].get("jobTitle") == "Buyer"
                   and system.folder(BEN)["sea1@example.com"].get("jobTitle") == "Buyer",
                   what="the BC edit in both folders")
        # Outlook -> Graph webhook -> router -> applier -> BC.
        contact = system.folder(ANNA)["lon1@example.com"]
        system.emulators.graph.person_update_contact(ANNA, contact["id"], {"jobTitle": "Poet"})
        eventually(lambda: system.bc_by_email()["lon1@example.com"]["jobTitle"] == "Poet",
                   what="the Outlook edit in BC")


def _contactsync(args: list[str], env: dict[str, str], cwd: Path
                 ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("CONTACTSYNC_", "KAFKA_"))}
    # The timeout only keeps a hang from blocking the suite; the command must end by itself.
    return subprocess.run([CONTACTSYNC, *args], env={**base, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.parametrize("command", [["topics", "ensure"], ["router"]])
def test_a_wrong_password_is_one_clear_sentence_and_the_password_is_never_shown(
        secured_kafka: SecuredKafka, tmp_path: Path, command: list[str]):
    wrong = "not-the-password-" + secured_kafka.password[:6]
    env = {**secured_kafka.env(password=wrong), "CONTACTSYNC_TOPIC_PREFIX": "wrongpw.",
           "CONTACTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
           "CONTACTSYNC_LOG_FORMAT": "json"}
    result = _contactsync(command, env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: Kafka at {secured_kafka.bootstrap} refused the SASL SCRAM-SHA-512 login of "
        "user 'contactsync': check CONTACTSYNC_KAFKA_SASL_USERNAME and "
        "CONTACTSYNC_KAFKA_SASL_PASSWORD (or _PASSWORD_FILE)"], result.stderr
    assert wrong not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_ca_the_broker_certificate_is_refused_in_one_sentence(
        secured_kafka: SecuredKafka, tmp_path: Path):
    env = {**secured_kafka.env(), "CONTACTSYNC_KAFKA_SSL_CAFILE": ""}
    env.pop("CONTACTSYNC_KAFKA_SSL_CAFILE")
    result = _contactsync(["topics", "ensure"], env, tmp_path)
    assert result.returncode == 1
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "TLS handshake" in error and "CONTACTSYNC_KAFKA_SSL_CAFILE" in error


def _b64(claims: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


class _UnsignedTokens:
    """azure-identity's credential interface, handing out unsigned JWTs: the test broker's
    default OAUTHBEARER validator takes them (there is no tenant here to sign real ones)."""

    def __init__(self, lifetime_s: int) -> None:
        self.lifetime_s = lifetime_s
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.extend(scopes)
        now = int(time.time())
        claims = {"sub": "contactsync", "iat": now - 120, "exp": now + self.lifetime_s}
        return AccessToken(f"{_b64({'alg': 'none'})}.{_b64(claims)}.", claims["exp"])


SCOPE = "https://contoso-kafka.servicebus.windows.net/.default"


def _oauth(secured: SecuredKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           credential: _UnsignedTokens) -> Settings:
    monkeypatch.setattr("contactsync.kafka.security.kafka_credential",
                        lambda _settings: credential)
    return _settings(secured, tmp_path).model_copy(update={
        "kafka_sasl_mechanism": "OAUTHBEARER", "kafka_sasl_username": "",
        "kafka_sasl_password": None, "kafka_oauth_scope": SCOPE, "topic_prefix": "oauth."})


def test_oauthbearer_logs_in_with_the_azure_identity_token(
        secured_kafka: SecuredKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    credential = _UnsignedTokens(lifetime_s=3600)
    settings = _oauth(secured_kafka, tmp_path, monkeypatch, credential)
    ensure_topics_at(settings, settings)
    producer = make_producer(settings)
    try:
        sent = producer.send(topic_name(settings, SYNC_COMMANDS), b"{}", key=b"u")
        assert sent.get(timeout=30).topic == "oauth.sync.commands"
    finally:
        producer.close()
    assert set(credential.scopes) == {SCOPE}


def test_an_oauth_token_the_broker_refuses_is_one_sentence(
        secured_kafka: SecuredKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = _oauth(secured_kafka, tmp_path, monkeypatch, _UnsignedTokens(lifetime_s=-60))
    with pytest.raises(BrokerError, match=f"refused the OAUTHBEARER login .* for {SCOPE}"):
        ensure_topics_at(settings, settings)
