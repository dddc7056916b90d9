"""State where admins expect it, and the CLI conventions: the default store lives in the
user's state directory (not the current one), `db status`/`db upgrade`, `--version`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contactsync.cli.main import app
from contactsync.logs import configure_logging
from contactsync.settings import Settings
from contactsync.store import Store

runner = CliRunner()


@pytest.fixture(autouse=True)
def _logs_off_the_runners_stream() -> Iterator[None]:
    yield
    configure_logging()  # the runner's stream closes; later tests' roles still log


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home, started from another directory, with no state directory chosen."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("CONTACTSYNC_STATE_DIR", raising=False)
    monkeypatch.delenv("CONTACTSYNC_DATABASE_URL", raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "home"


def test_the_store_and_the_broker_data_default_to_the_users_state_directory(home: Path):
    settings = Settings()
    state = home / ".local" / "state" / "contactsync"
    assert settings.database_url == f"sqlite:///{state / 'contactsync.db'}"
    assert settings.kafka_data_dir == state / "kafka"
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (state / "contactsync.db").exists()
    assert not list(Path.cwd().iterdir()), "nothing is written where the command started"


def test_state_dir_and_database_url_override_the_default(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    xdg_db = tmp_path / "xdg" / "contactsync" / "contactsync.db"
    assert Settings().database_url == f"sqlite:///{xdg_db}"
    monkeypatch.setenv("CONTACTSYNC_STATE_DIR", str(tmp_path / "chosen"))
    assert Settings().kafka_data_dir == tmp_path / "chosen" / "kafka"
    monkeypatch.setenv("CONTACTSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert Settings().database_url == f"sqlite:///{tmp_path / 'other.db'}"


def test_db_status_shows_pending_migrations_and_upgrade_applies_them_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("CONTACTSYNC_DATABASE_URL", url)
    before = runner.invoke(app, ["db", "status", "--json"])
    assert before.exit_code == 0, before.output
    report = json.loads(before.output)
    assert report["version"] == 0 and not report["current"] and report["pending"]
    assert "pending" in runner.invoke(app, ["db", "status"]).output

    first = json.loads(runner.invoke(app, ["db", "upgrade", "--json"]).output)
    assert first["applied"] == [p["version"] for p in report["pending"]] and first["current"]
    again = runner.invoke(app, ["db", "upgrade"])
    assert again.exit_code == 0 and "is current" in again.output
    with Store.open(url, migrate_schema=False) as store:
        assert store.setups.list_all() == []  # the schema is usable as it is


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("contactsync ") and result.output.strip()[-1].isdigit()
