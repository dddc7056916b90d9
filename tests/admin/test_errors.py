"""Issue 17: every mistake of a new admin ends in one sentence with the next step, fast, and
changes nothing on either side. Each case is a real `contactsync` subprocess (tests/admin/
cases.py); `python -m tests.admin.cases` prints the same cases as a before/after table."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at
from contactsync.settings import Settings
from contactsync.store.records import AuditKind, AuditRecord
from contactsync.sync.reconcile import UserReport
from tests.admin.cases import CASES, CONTACTSYNC, OFF, Case, by_name, run, world
from tests.kafka_fixtures import read_topic, role_env


def _check(case: Case, tmp: Path, kafka_env: dict[str, str] | None = None) -> str:
    with world(tmp, kafka_env) as w:
        case.prepare(w)
        before = w.state()
        args = [a.replace("HELD_PORT", case.env(w).get("HELD_PORT", "")) for a in case.args]
        out = run(w, Case(**{**case.__dict__, "args": args}))
        assert out.code == case.code, out.output
        assert "Traceback" not in out.output, out.output
        assert len(out.lines) <= case.max_lines, out.output
        for word in case.words:
            assert word in out.output, f"{word!r} missing from: {out.output}"
        for word in case.absent:
            assert word not in out.output, out.output
        assert w.state() == before, "a mistaken command changed something"
        return out.output


@pytest.mark.parametrize("case", [c for c in CASES if not c.kafka], ids=lambda c: c.name)
def test_each_mistake_is_one_sentence_with_the_next_step(case: Case, tmp_path: Path):
    _check(case, tmp_path)


def test_reconcile_wait_without_an_applier_says_so_and_publishes_nothing(
        kafka_settings: Settings, tmp_path: Path):
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    env = {k: v for k, v in role_env(kafka_settings).items()
           if k in ("KAFKA_BOOTSTRAP_SERVERS", "CONTACTSYNC_TOPIC_PREFIX")}
    _check(by_name("reconcile_wait_no_applier"), tmp_path, env)
    assert read_topic(kafka_settings, SYNC_COMMANDS) == []


def test_each_service_retry_prints_a_line_naming_the_service_and_url(tmp_path: Path):
    output = _check(by_name("bc_hangs"), tmp_path)
    retries = [line for line in output.splitlines() if "retry" in line]
    assert [line.split("retry ")[1].split(" in ")[0] for line in retries] == [
        "1 of 4", "2 of 4", "3 of 4", "4 of 4"]
    assert all(line.startswith("BC not answering at http://127.0.0.1:") for line in retries)


def test_a_disabled_user_syncs_with_force(tmp_path: Path):
    with world(tmp_path) as w:
        out = run(w, Case("forced", "", ["sync", OFF, "--force", "--dry-run"], 0, ()))
        assert out.code == 0, out.output
        assert "would write 3 change(s)" in out.output


def test_a_reader_that_closes_the_pipe_is_not_a_connection_failure(tmp_path: Path):
    with world(tmp_path) as w:
        # More kept reports than a pipe holds: the command is still writing when it closes.
        w.store.audit.append_many(
            AuditRecord(user_id=f"u{i:04}@contoso.test", kind=AuditKind.RECONCILE_REPORT,
                        details={"run_id": "r1", **UserReport(
                            user_id=f"u{i:04}@contoso.test", status="ok").as_dict()})
            for i in range(3000))
        with subprocess.Popen([*CONTACTSYNC, "reconcile", "--last"], env=w.env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.readline()
            proc.stdout.close()  # as `| head -1` does
            errors = proc.stderr.read().decode()
            proc.wait(timeout=60)
    assert "cannot connect" not in errors and "Traceback" not in errors, errors
