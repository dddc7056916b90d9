"""`contactsync users ...` and `contactsync sync ...` as an administrator runs them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contactsync.cli.common import RETRY_LOGGER
from contactsync.cli.main import app
from contactsync.emulators.running import RunningEmulators
from tests.sync.conftest import MAILBOX

runner = CliRunner()


@pytest.fixture
def env(emulators: RunningEmulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTACTSYNC_GRAPH_BASE_URL", emulators.graph_base_url)
    monkeypatch.setenv("CONTACTSYNC_BC_BASE_URL", emulators.bc_base_url)
    monkeypatch.setenv("CONTACTSYNC_BC_COMPANY", emulators.bc.company_id)
    monkeypatch.setenv("CONTACTSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("CONTACTSYNC_LOG_FORMAT", "json")
    monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)


def test_a_bad_filter_is_one_sentence_pointing_at_the_character(env: None):
    result = runner.invoke(app, ["users", "add", MAILBOX, "--filter", "city=Seattle|"])
    assert result.exit_code != 0
    assert "city" in result.output and "^" in result.output
    assert "Traceback" not in result.output


def test_add_list_set_disable_and_remove_a_user(env: None):
    added = runner.invoke(app, ["users", "add", MAILBOX, "--folder", "BC Contacts",
                                "--filter", "city=Seattle|Redmond", "--no-create-in-bc"])
    assert added.exit_code == 0, added.output
    again = runner.invoke(app, ["users", "add", MAILBOX])
    assert again.exit_code == 1 and "already exists" in again.output
    listed = json.loads(runner.invoke(app, ["users", "list", "--json"]).output)
    assert listed[0]["folder_name"] == "BC Contacts"
    assert listed[0]["contact_filter"] == {"city": "Seattle|Redmond"}
    assert listed[0]["create_in_bc"] is False
    assert runner.invoke(app, ["users", "set", MAILBOX, "--clear-filter"]).exit_code == 0
    assert runner.invoke(app, ["users", "disable", MAILBOX]).exit_code == 0
    shown = runner.invoke(app, ["users", "show", MAILBOX]).output
    assert "disabled" in shown and "(all contacts)" in shown
    assert runner.invoke(app, ["users", "remove", MAILBOX]).exit_code == 0
    assert runner.invoke(app, ["users", "show", MAILBOX]).exit_code == 1


def test_validate_then_sync_and_dry_run_print_summaries(env: None, emulators: RunningEmulators):
    for i in range(3):
        emulators.bc.create_contact({"displayName": f"Person {i}", "email": f"p{i}@x.test",
                                     "type": "Person"})
    assert runner.invoke(app, ["users", "add", MAILBOX, "--enable"]).exit_code == 0
    validated = runner.invoke(app, ["users", "validate", MAILBOX])
    assert validated.exit_code == 0, validated.output
    assert validated.output.count("ok ") == 3

    dry = runner.invoke(app, ["sync", MAILBOX, "--full", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["users"][0]["created_outlook"] == 3
    done = runner.invoke(app, ["sync", MAILBOX, "--full"])
    assert done.exit_code == 0 and "created  outlook=3" in done.output
    again = json.loads(runner.invoke(app, ["sync", MAILBOX, "--json"]).output)["users"][0]
    assert (again["created_outlook"], again["created_bc"], again["failed"]) == (0, 0, 0)


def test_validate_reads_bc_in_pages_not_one_request_per_person(
    env: None, emulators: RunningEmulators
):
    """`users validate` reads BC's contacts in full pages, never a one-contact page per
    person (issue 12, defect 4: `maxpagesize=1` plus following nextLink)."""
    for i in range(12):
        emulators.bc.create_contact({"displayName": f"Person {i}", "email": f"p{i}@x.test",
                                     "type": "Person"})
    assert runner.invoke(app, ["users", "add", MAILBOX]).exit_code == 0
    emulators.bc.reset_counters()
    validated = runner.invoke(app, ["users", "validate", MAILBOX])
    assert validated.exit_code == 0 and "selects 12 BC contacts" in validated.output
    reads = [r for r in emulators.bc.counters_snapshot()["by_route"]
             if r["method"] == "GET" and r["route"].endswith("/contacts")]
    assert sum(r["count"] for r in reads) == 1


def test_unknown_user_and_missing_tenant_are_clear_errors(env: None, monkeypatch):
    unknown = runner.invoke(app, ["sync", "nobody@contoso.test"])
    assert unknown.exit_code == 1 and "no setup for user 'nobody@contoso.test'" in unknown.output
    assert runner.invoke(app, ["users", "add", MAILBOX, "--enable"]).exit_code == 0
    monkeypatch.delenv("CONTACTSYNC_BC_BASE_URL")
    missing = runner.invoke(app, ["sync", MAILBOX])
    assert missing.exit_code == 1 and "CONTACTSYNC_BC_BASE_URL" in missing.output
    # `users add` checks the mailbox and the filter at the services: it needs them too.
    refused = runner.invoke(app, ["users", "add", MAILBOX, "--user-id", "u2", "--folder", "F2"])
    assert refused.exit_code == 1 and "CONTACTSYNC_BC_BASE_URL" in refused.output


def test_a_retry_line_after_a_command_run_inside_another_goes_to_the_stderr_of_the_moment(
        env: None, capsys: pytest.CaptureFixture[str]):
    """A one-shot command run by a CliRunner (or a tool embedding the CLI), whose stderr is
    closed once it returns: a later retry line is printed where stderr is now, not lost with
    a "--- Logging error ---" page in its place."""
    assert runner.invoke(app, ["users", "list"]).exit_code == 0
    logging.getLogger(RETRY_LOGGER).warning("Graph not reachable, retry 1 of 4 in 0.0 s")
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert "Graph not reachable, retry 1 of 4 in 0.0 s" in err
