"""`--json` wherever a command prints a report: what a script reads is the same facts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from contactsync.cli.main import app
from contactsync.emulators.running import RunningEmulators
from contactsync.logs import configure_logging
from tests.sync.conftest import MAILBOX
from tests.sync.test_cli import env

runner = CliRunner()


@pytest.fixture(autouse=True)
def _logs_off_the_runners_stream() -> Iterator[None]:
    yield
    configure_logging()  # the runner's stream closes; later tests' roles still log
__all__ = ["env"]


def test_users_show_and_validate_as_json(env: None, emulators: RunningEmulators):
    added = runner.invoke(app, ["users", "add", MAILBOX, "--filter", "city=Seattle", "--enable"])
    assert added.exit_code == 0, added.output
    shown = runner.invoke(app, ["users", "show", MAILBOX, "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["setup"]["mailbox"] == MAILBOX
    assert report["setup"]["contact_filter"] == {"city": "Seattle"}
    assert report["linked_contacts"] == 0 and report["last_sync_at"] is None
    assert "@" not in report["metrics_user"]  # the label its series carry

    assert runner.invoke(app, ["sync", MAILBOX, "--full"]).exit_code == 0
    synced = json.loads(runner.invoke(app, ["users", "show", MAILBOX, "--json"]).output)
    assert synced["last_sync_at"] is not None

    validated = runner.invoke(app, ["users", "validate", MAILBOX, "--json"])
    assert validated.exit_code == 0, validated.output
    checks = json.loads(validated.output)
    assert checks["ok"] is True and len(checks["checks"]) == 3
    assert any(MAILBOX in c for c in checks["checks"])


def test_users_show_json_of_an_unknown_user_is_one_sentence(env: None):
    result = runner.invoke(app, ["users", "show", "nobody@contoso.test", "--json"])
    assert result.exit_code == 1 and "no setup for user" in result.output
