"""Issue 17, "What an admin needs to see from the CLI": the audit, dry-run plans by name, one
report wording and one JSON report for `sync` and `reconcile`, exit code 3, expired commands.
Every command is a real `contactsync` subprocess against the emulators."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from contactsync.consumers.applier import GROUP_ID
from contactsync.emulators.common.faults import FaultSpec
from contactsync.kafka.topics import SYNC_COMMANDS, SYNC_RESULTS, ensure_topics_at, topic_name
from contactsync.producers.reconcile import CommandPublisher, consumers_of, reconcile_command
from contactsync.schemas.envelope import decode
from contactsync.schemas.messages import SyncResult
from contactsync.schemas.report import RunReport
from contactsync.settings import Settings
from tests.admin.cases import CONTACTSYNC, USER, Case, Outcome, World, run, world
from tests.kafka_fixtures import read_topic, role_env


def _cli(w: World, *args: str) -> Outcome:
    return run(w, Case("cli", "", list(args), 0, ()), stdout_only="--json" in args)


def _folder(w: World) -> tuple[str, dict[str, dict[str, Any]]]:
    """The user's Business Central folder id, and its contacts by email."""
    graph = w.emulators.graph
    user = graph.state.user(USER)
    folder = next(f for f in graph.state.child_folders(user) if f.display_name ==
                  "Business Central")
    contacts = graph.contacts(USER, folder.id)
    return folder.id, {c["emailAddresses"][0]["address"]: c for c in contacts}


def test_a_dry_run_names_each_contact_with_its_email_masked_and_writes_nothing(tmp_path: Path):
    with world(tmp_path) as w:
        before = w.state()
        out = _cli(w, "sync", USER, "--full", "--dry-run")
        assert out.code == 0, out.output
        assert out.lines[0] == "Full sync, dry run: nothing written"
        assert f"{USER}: ok, would write 3 change(s)" in out.output
        assert "create in Outlook" in out.output and "Person 0 <p***@fabrikam.test>" in out.output
        assert "person0@fabrikam.test" not in out.output
        assert w.state() == before


def test_sync_says_what_it_wrote_and_prints_the_reconcile_report_schema(tmp_path: Path):
    with world(tmp_path) as w:
        first = _cli(w, "sync", USER, "--full")
        assert first.code == 0 and first.lines[0] == "Full sync", first.output
        assert "wrote 3 change(s)" in first.output
        again = _cli(w, "sync", USER)
        assert again.lines[0] == "Sync" and "nothing written" in again.output, again.output
        assert "wrote" not in again.output
        report = RunReport.model_validate_json(_cli(w, "sync", USER, "--json").output)
        assert (report.kind, report.users[0].user_id, report.users[0].status) == (
            "sync", USER, "ok")
        inline = _cli(w, "reconcile", "--user", USER, "--inline", "--json")
        assert RunReport.model_validate_json(inline.output).kind == "reconcile", inline.output


def test_a_rail_stop_exits_3_names_force_and_is_in_the_audit(tmp_path: Path):
    with world(tmp_path) as w:
        people = [w.emulators.bc.create_contact({"displayName": f"P {i}", "type": "Person",
                                                 "email": f"p{i}@fabrikam.test"})
                  for i in range(25)]
        assert _cli(w, "sync", USER, "--full").code == 0
        for person in people[:22]:
            w.emulators.bc.delete_contact(person["id"])
        before = w.state()[0]
        stopped = _cli(w, "sync", USER, "--full")
        assert stopped.code == 3, stopped.output
        assert "STOPPED" in stopped.output and "--force" in stopped.output
        assert w.state()[0] == before, "the rail wrote nothing"
        audit = _cli(w, "audit", "--kind", "delete_rail")
        assert audit.code == 0 and f"{USER}  delete_rail  would remove 22" in audit.output


def test_the_audit_shows_bcs_values_and_the_outlook_version_that_lost(tmp_path: Path):
    with world(tmp_path) as w:
        bc, graph = w.emulators.bc, w.emulators.graph
        assert _cli(w, "sync", USER, "--full").code == 0
        folder_id, contacts = _folder(w)
        linked = contacts["person0@fabrikam.test"]
        bc_id = next(c["id"] for c in bc.contacts() if c["email"] == "person0@fabrikam.test")
        bc.update_contact(bc_id, {"jobTitle": "Buyer"})
        graph.person_update_contact(USER, linked["id"], {"jobTitle": "Poet"})
        # An adoption: both sides hold the same person, unlinked, with different titles.
        bc.create_contact({"displayName": "Ada", "email": "ada@fabrikam.test",
                           "type": "Person", "jobTitle": "Engineer"})
        graph.person_create_contact(USER, folder_id, {
            "displayName": "Ada", "jobTitle": "Countess",
            "emailAddresses": [{"address": "ada@fabrikam.test", "name": "Ada"}]})
        assert _cli(w, "sync", USER, "--full").code == 0

        conflict = _cli(w, "audit", "--user", USER, "--kind", "conflict")
        assert conflict.code == 0, conflict.output
        row = next(line for line in conflict.lines if line.strip().startswith("job_title"))
        assert row.split() == ["job_title", "Buyer", "Poet"]
        adopted = _cli(w, "audit", "--kind", "adopted", "--since", "1h", "--json")
        records = json.loads(adopted.output)
        assert [(r["kind"], r["details"]["bc"]["job_title"],
                 r["details"]["outlook"]["job_title"])
                for r in records] == [("adopted", "Engineer", "Countess")]
        assert _cli(w, "audit", "--since", "2999-01-01").lines == [
            "no audit records since 2999-01-01"]


def _pipeline_settings(kafka_settings: Settings, w: World) -> Settings:
    """The test broker's settings (topics made), with the world's store and emulators."""
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    return kafka_settings.model_copy(update={
        "database_url": f"sqlite:///{w.tmp / 'state.db'}",
        "graph_base_url": w.emulators.graph_base_url, "bc_base_url": w.emulators.bc_base_url,
        "bc_company": w.emulators.bc.company_id})


def test_an_applier_drops_a_late_command_and_names_a_dry_runs_contacts(
        kafka_settings: Settings, tmp_path: Path):
    with world(tmp_path) as w:
        settings = _pipeline_settings(kafka_settings, w)
        before = w.state()
        publisher = CommandPublisher(settings)
        publisher.publish([reconcile_command(USER, "late-run", expires_in=-1),
                           reconcile_command(USER, "dry-run", dry_run=True)])
        publisher.close()
        with subprocess.Popen([*CONTACTSYNC, "applier"], env={**w.env, **role_env(settings)},
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) as applier:
            try:
                results: list[SyncResult] = []
                deadline = time.monotonic() + 60
                while len(results) < 2:
                    assert time.monotonic() < deadline, "no result from the applier"
                    time.sleep(0.5)
                    results = [decode(r.value).payload
                               for r in read_topic(settings, SYNC_RESULTS)]
            finally:
                applier.terminate()
                applier.wait(timeout=30)
        assert [(r.run_id, r.status) for r in results] == [("late-run", "expired"),
                                                           ("dry-run", "ok")]
        assert "expired" in results[0].reason and "nothing was done" in results[0].reason
        assert any("create in Outlook" in line and "Person 0 <p***@fabrikam.test>" in line
                   for line in results[1].plan), results[1].plan
        assert w.state() == before


def test_reconcile_wait_says_it_is_still_waiting_while_an_applier_works(
        kafka_settings: Settings, tmp_path: Path):
    with world(tmp_path) as w:
        settings = _pipeline_settings(kafka_settings, w)
        env = {**w.env, **role_env(settings), "CONTACTSYNC_HTTP_TIMEOUT": "60"}
        with subprocess.Popen([*CONTACTSYNC, "applier"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as applier:
            try:
                deadline = time.monotonic() + 60
                while not consumers_of(settings, GROUP_ID, topic_name(settings, SYNC_COMMANDS)):
                    assert time.monotonic() < deadline, "the applier did not join"
                    time.sleep(0.5)
                # BC answers the user's listing after 12 s: longer than a quiet spell.
                w.emulators.bc.inject_fault(FaultSpec(kind="latency", seconds=12, count=1,
                                                      route="contacts"))
                out = run(w, Case("wait", "", ["reconcile", "--user", USER, "--wait"], 0, ()),
                          extra_env=role_env(settings))
            finally:
                applier.terminate()
                applier.wait(timeout=30)
        assert out.code == 0, out.output
        assert "still waiting for 1 user(s)" in out.output
