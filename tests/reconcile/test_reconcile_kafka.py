"""`contactsync reconcile` through the real broker and the applier, and the scheduler.

The administrator's view: the command's exit code and its per-user report (--json), the
folders and BC afterwards, the kept reports (--last); and what lands on `sync.commands`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from contactsync.cli.main import app
from contactsync.consumers.applier import Applier
from contactsync.consumers.router import Router
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.engine.mapping import BC_ID_PROPERTY
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import (
    GRAPH_NOTIFICATIONS,
    SYNC_COMMANDS,
    ensure_topics_at,
    topic_name,
)
from contactsync.kafka.worker import RetryPolicy
from contactsync.logs import configure_logging
from contactsync.producers.reconcile import CommandPublisher, Scheduler, reconcile_command
from contactsync.schemas.envelope import decode, encode, wrap
from contactsync.schemas.messages import CommandKind, GraphNotification, SyncCommand
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from tests.kafka_fixtures import read_topic, role_env
from tests.store.legacy import mark_sharing

pytestmark = pytest.mark.kafka

ANNA, BEN, OFF = "anna@contoso.test", "ben@contoso.test", "off@contoso.test"
runner = CliRunner()


@dataclass
class System:
    settings: Settings
    emulators: RunningEmulators
    store: Store

    def folder(self, mailbox: str) -> dict[str, dict[str, Any]]:
        graph = self.emulators.graph
        for f in graph.state.child_folders(graph.state.user(mailbox)):
            if f.display_name == "Business Central":
                return {(c.get("emailAddresses") or [{}])[0].get("address", ""): c
                        for c in graph.contacts(mailbox, str(f.id))}
        return {}

    def writes(self) -> int:
        return sum(r["count"] for snap in (self.emulators.graph.counters_snapshot(),
                                           self.emulators.bc.counters_snapshot())
                   for r in snap["by_route"] if r["method"] in ("POST", "PATCH", "DELETE"))


def read_commands(settings: Settings) -> list[tuple[int, float, SyncCommand]]:
    """Every record of sync.commands: (partition, timestamp in s, command)."""
    out = []
    for r in read_topic(settings, SYNC_COMMANDS):
        command = decode(r.value).payload
        assert r.key == command.user_id.encode()
        out.append((r.partition, r.timestamp / 1000, command))
    return out


@pytest.fixture
def system(kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    emulators = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                                bc_config=BcEmulatorConfig.for_tests())
    settings = kafka_settings.model_copy(update={
        "graph_base_url": emulators.graph_base_url, "bc_base_url": emulators.bc_base_url,
        "bc_company": emulators.bc.company_id})
    for name, value in role_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)
    store = Store.open(settings.database_url)
    for mailbox, flt, enabled in ((ANNA, {}, True), (BEN, {"city": "Seattle"}, True),
                                  (OFF, {}, False)):
        emulators.graph.add_user(mailbox)
        store.setups.add(UserSetup(user_id=mailbox, mailbox=mailbox, contact_filter=flt,
                                   enabled=enabled))
    try:
        yield System(settings, emulators, store)
    finally:
        store.close()
        emulators.stop()


@pytest.fixture
def applier(system: System) -> Iterator[Applier]:
    applier = Applier(system.settings, system.store)
    stop = threading.Event()
    thread = threading.Thread(target=applier.run, args=(stop,), daemon=True)
    thread.start()
    yield applier
    stop.set()
    thread.join(timeout=15)


def _invoke(*args: str) -> Any:
    try:
        return runner.invoke(app, ["reconcile", *args])
    finally:
        configure_logging()  # off the runner's stream, which closes (the applier still logs)


def _reconcile(*args: str) -> tuple[int, Any]:
    result = _invoke(*args)
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(result.output) from None


def test_reconcile_wait_json_through_kafka_repairs_drift_and_reports_per_user(
        system: System, applier: Applier):
    bc, graph = system.emulators.bc, system.emulators.graph
    sea = [bc.create_contact({"displayName": f"Sea {i}", "email": f"s{i}@example.com",
                              "type": "Person", "city": "Seattle"}) for i in range(4)]
    bc.create_contact({"displayName": "Lon", "email": "lon@example.com", "type": "Person",
                       "city": "London"})
    # The first load, in process (no Kafka): every enabled user, none for the disabled one.
    code, first = _reconcile("--all", "--inline", "--json")
    assert code == 0 and [u["user_id"] for u in first["users"]] == [ANNA, BEN]
    assert [u["created_outlook"] for u in first["users"]] == [5, 4]
    assert system.folder(OFF) == {}

    # Drift with nothing running; then one reconcile through the broker and the applier.
    bc.update_contact(sea[0]["id"], {"jobTitle": "Buyer"})
    graph.person_update_contact(ANNA, system.folder(ANNA)["lon@example.com"]["id"],
                                {"jobTitle": "Poet"})  # outside BEN's filter
    graph.person_delete_contact(BEN, system.folder(BEN)["s2@example.com"]["id"])
    code, report = _reconcile("--all", "--wait", "--json", "--timeout", "60")

    assert code == 0, report
    users = {u["user_id"]: u for u in report["users"]}
    assert sorted(users) == [ANNA, BEN] and report["run_id"].startswith("cli-")
    assert (users[ANNA]["status"], users[BEN]["status"]) == ("ok", "ok")
    assert (users[ANNA]["updated_outlook"], users[ANNA]["updated_bc"]) == (1, 1)
    assert (users[BEN]["updated_outlook"], users[BEN]["created_outlook"]) == (1, 1)
    assert users[BEN]["writes"] == 2 and report["totals"]["users_ok"] == 2
    assert users[ANNA]["duration_s"] > 0 and "skipped" in users[ANNA]
    assert system.folder(BEN)["s0@example.com"]["jobTitle"] == "Buyer"
    assert bc.contact(system.folder(ANNA)["lon@example.com"]["_ext"][BC_ID_PROPERTY])[
        "jobTitle"] == "Poet"
    assert "s2@example.com" in system.folder(BEN)

    # Again: nothing to do, no write anywhere.
    before = system.writes()
    code, again = _reconcile("--all", "--wait", "--json", "--timeout", "60")
    assert code == 0 and [u["writes"] for u in again["users"]] == [0, 0]
    assert system.writes() == before

    # The kept reports: the last run of each user.
    code, kept = _reconcile("--last", "--json")
    assert code == 0 and [(k["user_id"], k["run_id"]) for k in kept] == [
        (ANNA, again["run_id"]), (BEN, again["run_id"])]
    shown = _invoke("--last", "--user", BEN).output
    assert f"{BEN}: ok" in shown and "created  outlook=0 bc=0" in shown
    refused = _invoke("--user", OFF, "--wait")
    assert refused.exit_code == 1 and "disabled" in refused.output


def test_a_dry_run_and_the_rail_through_kafka_then_force(system: System, applier: Applier):
    bc = system.emulators.bc
    people = [bc.create_contact({"displayName": f"P {i}", "email": f"p{i}@example.com",
                                 "type": "Person"}) for i in range(25)]
    assert _reconcile("--user", ANNA, "--inline", "--json")[0] == 0
    for person in people[:22]:
        bc.delete_contact(person["id"])
    before = system.writes()
    code, dry = _reconcile("--user", ANNA, "--dry-run", "--wait", "--json")
    assert code == 3 and dry["dry_run"] and dry["users"][0]["status"] == "stopped"
    code, stopped = _reconcile("--user", ANNA, "--wait", "--json")
    assert code == 3 and "would remove 22 of 25" in stopped["users"][0]["reason"]
    assert system.writes() == before and len(system.folder(ANNA)) == 25
    code, forced = _reconcile("--user", ANNA, "--force", "--wait", "--json")
    assert code == 0 and forced["users"][0]["deleted_outlook"] == 22
    assert sorted(system.folder(ANNA)) == ["p22@example.com", "p23@example.com",
                                           "p24@example.com"]


def test_reconcile_commands_share_the_partition_of_the_users_real_time_commands(
        system: System):
    users = [f"u{i}@contoso.test" for i in range(8)]
    for user_id in users:
        system.store.setups.add(UserSetup(user_id=user_id, mailbox=user_id))
    # The router turns a Graph notification per user into that user's graph_hint...
    producer = make_producer(system.settings.kafka_bootstrap_servers)
    for user_id in users:
        note = GraphNotification(subscription_id=f"sub-{user_id}", user_id=user_id,
                                 change_type="updated", resource="x",
                                 received_at=datetime.now(UTC))
        producer.send(topic_name(system.settings, GRAPH_NOTIFICATIONS),
                      key=f"sub-{user_id}".encode(), value=encode(wrap(note)))
    producer.flush(timeout=10)
    producer.close(timeout=5)
    router = Router(system.settings, system.store)
    worker = router.build_worker(retry=RetryPolicy(max_attempts=1000, base_delay=0.01, timeout=0.5))
    try:
        deadline = time.monotonic() + 30
        while router.routed < len(users):
            assert time.monotonic() < deadline, "the router did not route the notifications"
            worker.run_once()
    finally:
        worker.close()
        router.close()
    # ...and the reconcile publisher sends each user's full_sync.
    publisher = CommandPublisher(system.settings)
    publisher.publish([reconcile_command(u, "run-1") for u in users])
    publisher.close()

    partitions: dict[str, set[int]] = {}
    kinds: dict[str, set[CommandKind]] = {}
    for partition, _, command in read_commands(system.settings):
        partitions.setdefault(command.user_id, set()).add(partition)
        kinds.setdefault(command.user_id, set()).add(command.kind)
    assert all(kinds[u] == {CommandKind.GRAPH_HINT, CommandKind.FULL_SYNC} for u in users)
    assert all(len(partitions[u]) == 1 for u in users), partitions
    assert len(set().union(*partitions.values())) > 1, "users spread over the partitions"


def test_the_scheduler_publishes_one_command_per_enabled_user_jittered_in_the_window(
        system: System):
    for i in range(7):
        system.store.setups.add(UserSetup(user_id=f"u{i}@contoso.test",
                                          mailbox=f"u{i}@contoso.test"))
    mark_sharing(system.store, "u6@contoso.test", ANNA)  # stopped: never scheduled
    enabled = sorted([ANNA, BEN] + [f"u{i}@contoso.test" for i in range(6)])
    window = 2.0
    scheduler = Scheduler(system.settings, system.store, jitter=window)
    slot = datetime.now(UTC)
    run_id = scheduler.run_slot(slot, threading.Event())
    scheduler.publisher.close()
    ended = time.time()

    commands = read_commands(system.settings)
    assert sorted(c.user_id for _, _, c in commands) == enabled, "one each, none for OFF, u6"
    assert {(c.kind, c.run_id, c.dry_run, c.force) for _, _, c in commands} == {
        (CommandKind.FULL_SYNC, run_id, False, False)}
    times = sorted(t for _, t, _ in commands)
    assert slot.timestamp() - 0.5 <= times[0] and times[-1] <= slot.timestamp() + window + 0.5
    assert times[-1] - times[0] >= window / 2, "spread over the window, not all at once"
    assert ended - slot.timestamp() >= times[-1] - slot.timestamp() - 0.5


def test_the_scheduler_role_fires_on_its_schedule_and_stops_when_asked(system: System):
    settings = system.settings.model_copy(update={"reconcile_schedule": "every 1s",
                                                  "reconcile_jitter": 0.2})
    scheduler = Scheduler(settings, system.store)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while scheduler.published < 2:
        assert time.monotonic() < deadline, "no scheduled run"
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    runs = {c.run_id for _, _, c in read_commands(settings)}
    assert all(r.startswith("scheduled-") for r in runs)
