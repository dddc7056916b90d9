"""Kafka client settings as an operator gives them: what is asked for when something is missing,
the Event Hubs token scope, and kafka-python's own log lines in our JSON with secrets masked.
(The secured broker end to end: tests/pipeline/test_secured_kafka.py.)"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from pydantic import ValidationError

from contactsync.kafka.errors import BrokerError
from contactsync.kafka.io import client_config
from contactsync.kafka.security import AzureTokenProvider, oauth_scope
from contactsync.logs import configure_logging
from contactsync.settings import Settings

EVENT_HUBS = "contoso-prod.servicebus.windows.net:9093"


def test_sasl_without_a_mechanism_or_password_names_the_variables_to_set():
    with pytest.raises(ValidationError, match="needs CONTACTSYNC_KAFKA_SASL_MECHANISM"):
        Settings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="CONTACTSYNC_KAFKA_SASL_PASSWORD"):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="svc")
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="SASL_TLS")  # not a protocol Kafka knows


def test_the_password_file_is_read_and_a_missing_one_is_one_sentence(tmp_path: Path):
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    settings = Settings(kafka_bootstrap_servers="broker:9093", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="svc",
                        kafka_sasl_password_file=secret, kafka_ssl_cafile=tmp_path / "ca.pem")
    config = client_config(settings)
    assert config["sasl_plain_password"] == "s3cret-from-file"
    assert config["ssl_cafile"] == str(tmp_path / "ca.pem")
    missing = settings.model_copy(update={"kafka_sasl_password_file": tmp_path / "nope"})
    with pytest.raises(BrokerError, match="fix CONTACTSYNC_KAFKA_SASL_PASSWORD_FILE"):
        client_config(missing)


def test_event_hubs_scope_comes_from_the_bootstrap_address_unless_set():
    hubs = Settings(kafka_bootstrap_servers=EVENT_HUBS)
    assert oauth_scope(hubs) == "https://contoso-prod.servicebus.windows.net/.default"
    custom = hubs.model_copy(update={"kafka_oauth_scope": "api://kafka/.default"})
    assert oauth_scope(custom) == "api://kafka/.default"
    with pytest.raises(BrokerError, match="CONTACTSYNC_KAFKA_OAUTH_SCOPE"):
        oauth_scope(Settings(kafka_bootstrap_servers="kafka.internal:9093"))


class _Credential:
    """azure-identity's get_token interface (no tenant here to ask for a real token)."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(f"token-{len(self.scopes)}", int(time.time() + self.lifetime_s))


def test_the_oauth_token_is_reused_until_shortly_before_it_expires():
    long_lived = _Credential(lifetime_s=3600)
    provider = AzureTokenProvider(long_lived, "https://ns.servicebus.windows.net/.default")
    assert [provider.token() for _ in range(3)] == ["token-1"] * 3
    assert long_lived.scopes == ["https://ns.servicebus.windows.net/.default"]
    expiring = _Credential(lifetime_s=60)  # inside the renewal margin: asked every time
    provider = AzureTokenProvider(expiring, "s")
    assert [provider.token(), provider.token()] == ["token-1", "token-2"]


def test_kafka_python_lines_come_out_as_our_json_with_the_password_masked(tmp_path: Path):
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    settings = Settings(kafka_bootstrap_servers="broker:9093",
                        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                        kafka_sasl_username="svc", kafka_sasl_password="pa55-word-xyz")
    config = client_config(settings)  # registers the password with the redaction
    logging.getLogger("kafka.net.connection").warning(
        "Starting with configuration: %s", config)
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["logger"] == "kafka.net.connection" and record["level"] == "warning"
    assert "timestamp" in record and "sasl_plain_username" in record["event"]
    assert "pa55-word-xyz" not in line
