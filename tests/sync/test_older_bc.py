"""Sync against a Business Central older than 2024, whose contacts have no `jobTitle`: the
product learns the environment's fields from `$metadata` once and selects and writes only
those (issue 12, defect 9). Before, every listing named jobTitle in `$select` and BC answered
400, so no Full sync could run there."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.engine.links import SyncMode
from tests.sync.conftest import MAILBOX, World


@pytest.fixture
def emulators() -> Iterator[RunningEmulators]:
    running = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                              bc_config=BcEmulatorConfig.for_tests(job_title_field=False))
    running.graph.add_user(MAILBOX)
    try:
        yield running
    finally:
        running.stop()


def _metadata_reads(world: World) -> int:
    return sum(int(r["count"]) for r in world.emulators.bc.counters_snapshot()["by_route"]
               if r["route"].endswith("/$metadata"))


async def test_both_ways_without_job_title(world: World, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="contactsync.clients.bc")
    bc = world.emulators.bc
    for i in range(3):
        bc.create_contact({"displayName": f"Person {i}", "email": f"p{i}@example.com",
                           "type": "Person", "city": "Oslo"})

    full = await world.sync(SyncMode.FULL)

    assert full.execution is not None and full.execution.failures == []
    assert full.summary.created_in_outlook == 3
    assert sorted(c["displayName"] for c in await world.folder()) == [
        "Person 0", "Person 1", "Person 2"]

    # An Outlook contact with a job title reaches BC: the title is left out, nothing fails.
    folder_id = next(f["id"] for f in await world.graph.list_folders(MAILBOX)
                     if f["displayName"] == "Business Central")
    world.emulators.graph.person_create_contact(MAILBOX, folder_id, {
        "displayName": "Grace Hopper", "jobTitle": "Rear Admiral",
        "emailAddresses": [{"address": "grace@example.com", "name": "Grace Hopper"}]})
    synced = await world.sync(SyncMode.SYNC)
    assert synced.execution is not None and synced.execution.failures == []
    [grace] = [p for p in world.bc_persons() if p["email"] == "grace@example.com"]
    assert "jobTitle" not in grace
    again = await world.sync(SyncMode.FULL)
    assert again.execution is not None and again.execution.failures == []
    assert sum(again.execution.writes.values()) == 0, "settled: nothing to write"
    folder = {c["displayName"]: c for c in await world.folder()}
    assert folder["Grace Hopper"]["jobTitle"] == "Rear Admiral", "Outlook keeps its title"

    assert _metadata_reads(world) == 1, "learned once per company (per client)"

    # An Outlook edit of the job title alone has nothing to write into this BC.
    world.emulators.bc.reset_counters()
    world.emulators.graph.person_update_contact(MAILBOX, folder["Grace Hopper"]["id"],
                                                {"jobTitle": "Admiral"})
    edited = await world.sync(SyncMode.SYNC)
    assert edited.execution is not None and edited.execution.failures == []
    bc_writes = [r for r in world.emulators.bc.counters_snapshot()["by_route"]
                 if r["method"] in ("POST", "PATCH", "DELETE")]
    assert bc_writes == []

    missing = [r for r in caplog.records if "no contact field 'jobTitle'" in r.getMessage()]
    assert len(missing) == 1, "logged once, not an error"
