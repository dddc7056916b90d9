"""The applier on the real broker against the emulators: commands in, writes and results out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from contactsync.consumers.applier import UNKNOWN_USER, Applier
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import SYNC_COMMANDS, SYNC_RESULTS, ensure_topics_at, topic_name
from contactsync.kafka.worker import RetryPolicy, Worker
from contactsync.schemas.contacts import BcContact
from contactsync.schemas.envelope import decode, encode, wrap
from contactsync.schemas.messages import (
    BcChangeKind,
    BcContactChanged,
    CommandKind,
    ResultStatus,
    SyncCommand,
    SyncResult,
)
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from tests.kafka_fixtures import read_topic
from tests.store.legacy import mark_sharing

pytestmark = pytest.mark.kafka

MAILBOX = "user1@contoso.test"
FAST = RetryPolicy(max_attempts=1000, base_delay=0.01, max_delay=0.05, timeout=0.5)


@dataclass
class Rig:
    settings: Settings
    emulators: RunningEmulators
    store: Store
    applier: Applier
    worker: Worker
    results_seen: int = 0

    def send(self, *commands: SyncCommand) -> list[str]:
        """Publish the commands (keyed by user) in order; their event ids."""
        producer = make_producer(self.settings.kafka_bootstrap_servers)
        ids = []
        try:
            for command in commands:
                envelope = wrap(command, trace_id=f"trace-{command.kind}")
                ids.append(envelope.event_id)
                producer.send(topic_name(self.settings, SYNC_COMMANDS),
                              key=command.user_id.encode(), value=encode(envelope))
            producer.flush(timeout=10)
        finally:
            producer.close(timeout=5)
        return ids

    def apply(self, n: int, timeout: float = 30.0) -> list[SyncResult]:
        """Run the applier until `n` more results are published; those results."""
        deadline = time.monotonic() + timeout
        while self.applier.published < self.results_seen + n:
            assert time.monotonic() < deadline, "the applier did not get there in time"
            self.worker.run_once()
        results = read_results(self.settings)
        assert len(results) == self.results_seen + n, "exactly one result per command"
        new = results[self.results_seen:]
        self.results_seen = len(results)
        return new

    def folder(self) -> dict[str, dict[str, Any]]:
        """The user's Business Central folder by email."""
        resp = httpx.get(f"{self.emulators.graph_base_url}/users/{MAILBOX}/contactFolders")
        [folder_id] = [f["id"] for f in resp.json()["value"]
                       if f["displayName"] == "Business Central"]
        contacts = self.emulators.graph.contacts(MAILBOX, folder_id)
        return {c["emailAddresses"][0]["address"].lower(): c for c in contacts}

    def writes(self) -> int:
        total = 0
        for snap in (self.emulators.graph.counters_snapshot(),
                     self.emulators.bc.counters_snapshot()):
            total += sum(r["count"] for r in snap["by_route"]
                         if r["method"] in ("POST", "PATCH", "DELETE"))
        return total


def read_results(settings: Settings) -> list[SyncResult]:
    out: list[tuple[int, SyncResult]] = []
    for r in read_topic(settings, SYNC_RESULTS):
        envelope = decode(r.value)
        assert r.key.decode() == envelope.payload.user_id
        out.append((r.timestamp, envelope.payload))
    return [result for _, result in sorted(out, key=lambda x: x[0])]


@pytest.fixture
def rig(kafka_settings: Settings) -> Iterator[Rig]:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    emulators = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                                bc_config=BcEmulatorConfig.for_tests())
    emulators.graph.add_user(MAILBOX)
    settings = kafka_settings.model_copy(update={
        "graph_base_url": emulators.graph_base_url,
        "bc_base_url": emulators.bc_base_url,
        "bc_company": emulators.bc.company_id,
    })
    store = Store.open(settings.database_url)
    store.setups.add(UserSetup(user_id=MAILBOX, mailbox=MAILBOX))
    applier = Applier(settings, store)
    worker = applier.build_worker(retry=FAST)
    try:
        yield Rig(settings, emulators, store, applier, worker)
    finally:
        worker.close()
        applier.close()
        store.close()
        emulators.stop()


def _person(name: str, email: str, **extra: Any) -> dict[str, Any]:
    return {"displayName": name, "email": email, "type": "Person", **extra}


def full_sync(**kw: Any) -> SyncCommand:
    return SyncCommand(user_id=MAILBOX, kind=CommandKind.FULL_SYNC, **kw)


def bc_change(entity: dict[str, Any] | None, contact_id: str = "") -> SyncCommand:
    change = BcContactChanged(
        company_id="co", contact_id=entity["id"] if entity else contact_id,
        kind=BcChangeKind.UPSERT if entity else BcChangeKind.DELETED,
        snapshot=BcContact.model_validate(entity) if entity else None)
    return SyncCommand(user_id=MAILBOX, kind=CommandKind.BC_CHANGE, bc_change=change)


def _statuses(results: Sequence[SyncResult]) -> list[tuple[str, CommandKind, ResultStatus]]:
    return [(r.user_id, r.kind, r.status) for r in results]


def test_bc_changes_reach_the_folder_once_and_duplicates_write_nothing(rig: Rig) -> None:
    bc = rig.emulators.bc
    people = [bc.create_contact(_person(f"P {i}", f"p{i}@example.com")) for i in range(5)]
    [ids] = [rig.send(full_sync(run_id="r-1"))]
    [result] = rig.apply(1)
    assert (result.status, result.command_id, result.run_id) == (ResultStatus.OK, ids[0], "r-1")
    assert result.summary["created_in_outlook"] == 5 and len(rig.folder()) == 5

    edited = bc.update_contact(people[1]["id"], {"jobTitle": "Buyer"})
    edited_again = bc.update_contact(people[1]["id"], {"jobTitle": "Chief Buyer"})
    added = bc.create_contact(_person("New One", "new@example.com"))
    bc.delete_contact(people[4]["id"])
    # In one poll: an older snapshot then a newer one (the last wins), a new contact, a
    # deletion; and a duplicate of each.
    commands = [bc_change(edited), bc_change(edited_again), bc_change(added),
                bc_change(None, people[4]["id"])]
    rig.send(*commands, *commands)
    results = rig.apply(8)
    assert _statuses(results) == [(MAILBOX, CommandKind.BC_CHANGE, ResultStatus.OK)] * 8
    # Each result carries its own counts: together they count every write once.
    totals = {k: sum(r.summary.get(k, 0) for r in results)
              for k in ("created_in_outlook", "updated_outlook", "deleted_from_outlook")}
    assert totals == {"created_in_outlook": 1, "updated_outlook": 1, "deleted_from_outlook": 1}
    folder = rig.folder()
    assert folder["p1@example.com"]["jobTitle"] == "Chief Buyer"
    assert "new@example.com" in folder and "p4@example.com" not in folder
    assert len(folder) == 5

    # The same commands delivered again (at least once): no write at all.
    before = rig.writes()
    rig.send(*commands)
    again = rig.apply(4)
    assert [r.status for r in again] == [ResultStatus.OK] * 4
    assert rig.writes() == before, "duplicated commands cost no write"


def test_a_graph_hint_brings_an_outlook_edit_into_bc(rig: Rig) -> None:
    bc = rig.emulators.bc
    ada = bc.create_contact(_person("Ada Lovelace", "ada@example.com"))
    rig.send(full_sync())
    rig.apply(1)
    rig.emulators.graph.person_update_contact(MAILBOX, rig.folder()["ada@example.com"]["id"],
                                              {"jobTitle": "Countess"})
    hint = SyncCommand(user_id=MAILBOX, kind=CommandKind.GRAPH_HINT, reason="graph updated")
    rig.send(hint, hint, hint)  # many hints, one delta read
    results = rig.apply(3)
    assert [r.status for r in results] == [ResultStatus.OK] * 3
    assert bc.contact(ada["id"])["jobTitle"] == "Countess"
    assert results[0].summary["updated_bc"] == 1
    assert sum(r.summary.get("updated_bc", 0) for r in results) == 1, "counted once"


def test_a_setup_sharing_another_setups_folder_is_stopped_and_never_synced(rig: Rig) -> None:
    rig.emulators.bc.create_contact(_person("Ada", "ada@example.com"))
    rig.send(full_sync())
    rig.apply(1)
    # As a store written before the one-setup-per-folder key may hold it: a case variant.
    twin = "twin@contoso.test"
    rig.store.setups.add(UserSetup(user_id=twin, mailbox=twin, folder_name="Twin"))
    mark_sharing(rig.store, twin, MAILBOX)
    before = rig.writes()
    rig.send(SyncCommand(user_id=twin, kind=CommandKind.FULL_SYNC),
             SyncCommand(user_id=twin, kind=CommandKind.GRAPH_HINT))
    results = rig.apply(2)
    assert [r.status for r in results] == [ResultStatus.STOPPED] * 2
    assert "shares folder 'Business Central'" in results[0].reason
    assert MAILBOX.upper() in results[0].reason and "--folder" in results[0].reason
    assert rig.writes() == before and len(rig.folder()) == 1


def test_a_full_sync_against_an_emptied_bc_stops_on_the_rail(rig: Rig) -> None:
    bc = rig.emulators.bc
    people = [bc.create_contact(_person(f"P {i}", f"p{i}@example.com")) for i in range(30)]
    rig.send(full_sync())
    rig.apply(1)
    for person in people[:25]:
        bc.delete_contact(person["id"])
    rig.send(full_sync(), full_sync(dry_run=True, force=True))
    stopped, dry = rig.apply(2)
    assert stopped.status is ResultStatus.STOPPED and stopped.reason
    assert len(rig.folder()) == 30, "nothing was removed"
    assert dry.status is ResultStatus.OK and dry.dry_run
    assert dry.summary["deleted_from_outlook"] == 25 and len(rig.folder()) == 30


def test_an_unknown_or_disabled_user_fails_its_result_and_the_stream_goes_on(rig: Rig) -> None:
    rig.emulators.bc.create_contact(_person("Ada", "ada@example.com"))
    rig.store.setups.add(UserSetup(user_id="off@contoso.test", mailbox="off@contoso.test",
                                   enabled=False))
    ghost = SyncCommand(user_id="ghost@contoso.test", kind=CommandKind.SYNC)
    off = SyncCommand(user_id="off@contoso.test", kind=CommandKind.GRAPH_HINT)
    rig.send(ghost, off, full_sync())
    results = {r.user_id: r for r in rig.apply(3)}
    assert results["ghost@contoso.test"].status is ResultStatus.FAILED
    assert results["ghost@contoso.test"].reason == UNKNOWN_USER
    assert results["off@contoso.test"].status is ResultStatus.FAILED
    assert results[MAILBOX].status is ResultStatus.OK and len(rig.folder()) == 1
    rig.worker.run_once()
    assert rig.worker.tracker.committable() == {}, "every offset is committed (none in DLQ)"


def test_run_owns_its_event_loop_in_the_worker_thread_until_stopped(rig: Rig) -> None:
    rig.emulators.bc.create_contact(_person("Ada", "ada@example.com"))
    rig.worker.close()  # this test runs the applier's own loop instead
    applier = Applier(rig.settings, rig.store)
    stop = threading.Event()
    thread = threading.Thread(target=applier.run, args=(stop,), daemon=True)
    thread.start()
    try:
        rig.send(full_sync())
        deadline = time.monotonic() + 30
        while applier.published < 1:
            assert time.monotonic() < deadline, "no result"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive(), "the applier stops when asked"
    [result] = read_results(rig.settings)
    assert result.status is ResultStatus.OK and len(rig.folder()) == 1
