"""Settings come from the environment and a config file; logs never carry a secret or an email."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from contactsync.logs import configure_logging, get_logger
from contactsync.settings import Settings


def test_environment_and_config_file_are_read_with_env_winning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    config = tmp_path / "contactsync.toml"
    config.write_text('bc_company = "CRONUS"\ntopic_partitions = 6\n'
                      'graph_base_url = "https://graph.example/v1.0"\n')
    monkeypatch.setenv("CONTACTSYNC_CONFIG", str(config))
    monkeypatch.setenv("CONTACTSYNC_TOPIC_PARTITIONS", "24")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("CONTACTSYNC_DATABASE_URL", "postgresql+psycopg://db/contactsync")
    settings = Settings()  # the config file's name is read now, not at import
    assert settings.bc_company == "CRONUS"
    assert settings.topic_partitions == 24
    assert settings.kafka_bootstrap_servers == "broker:9092"
    assert settings.database_url.startswith("postgresql")
    assert not settings.uses_emulators


def test_defaults_use_the_emulators_sqlite_and_twelve_partitions(monkeypatch: pytest.MonkeyPatch):
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "CONTACTSYNC_GRAPH_BASE_URL", "CONTACTSYNC_BC_BASE_URL",
                "CONTACTSYNC_DATABASE_URL", "CONTACTSYNC_TOPIC_PARTITIONS"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings()
    assert settings.uses_emulators
    assert settings.database_url.startswith("sqlite:///")
    assert settings.topic_partitions == 12


def test_logs_redact_secrets_tokens_and_emails():
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    log = get_logger("test")
    log.info(
        "token refreshed",
        access_token="eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        client_state="s3cr3t-state-value",
        headers={"Authorization": "Bearer abc.def.ghi"},
        note="sent to Jane.Doe@contoso.com with Bearer zzzTOKENzzz",
        contact={"email": "bob@fabrikam.com", "displayName": "Bob"},
    )
    line = out.getvalue()
    record = json.loads(line)
    for secret in ("eyJhbGci", "s3cr3t", "abc.def.ghi", "zzzTOKENzzz", "Jane.Doe@", "bob@"):
        assert secret not in line
    assert record["note"] == "sent to J***@contoso.com with Bearer ***"
    assert record["contact"]["email"] == "b***@fabrikam.com"
    assert record["contact"]["displayName"] == "Bob"
    assert record["event"] == "token refreshed"


def test_a_logger_made_before_configuration_still_redacts():
    early = get_logger("early", component="test")
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    early.info("sent", client_state="very-secret-value", to="carol@example.com")
    line = out.getvalue()
    assert "very-secret-value" not in line and "carol@" not in line
    assert json.loads(line)["component"] == "test"
