"""The near-real-time path's optimistic writes (sync/near_real_time.py), against the emulators:
a person editing the other side between our read and our write costs a 412, a fresh read and
a new plan, and ends with BC's values (BC is master), the lost Outlook values audited."""

from __future__ import annotations

from typing import Any

import pytest

from contactsync.engine.links import SyncMode
from contactsync.engine.planner import BcSnapshot
from contactsync.store.records import AuditKind
from contactsync.sync.runner import Sessions, apply_changes
from tests.sync.conftest import MAILBOX, World


def _by_email(contacts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {(c.get("emailAddresses") or [{}])[0].get("address", "").lower(): c for c in contacts}


def _patches(world: World, service: str) -> int:
    emulator = world.emulators.graph if service == "graph" else world.emulators.bc
    return sum(int(r["count"]) for r in emulator.counters_snapshot()["by_route"]
               if r["method"] == "PATCH")


async def _linked_people(world: World, n: int = 5) -> list[dict[str, Any]]:
    bc = world.emulators.bc
    people = [bc.create_contact({"displayName": f"P {i}", "email": f"p{i}@example.com",
                                 "type": "Person"}) for i in range(n)]
    await world.sync(SyncMode.FULL)
    return people

async def test_outlook_edited_between_our_read_and_our_write_bc_wins(world: World) -> None:
    people = await _linked_people(world)
    setup = world.setup()
    graph_id = _by_email(await world.folder())["p2@example.com"]["id"]
    original = world.graph.update_contact
    edits = 0

    async def person_edits_first(mailbox: str, contact_id: str, *a: Any, **kw: Any) -> Any:
        nonlocal edits
        if contact_id == graph_id and edits == 0:  # after our read, before our write
            edits += 1
            world.emulators.graph.person_update_contact(
                MAILBOX, graph_id, {"jobTitle": "Outlook title", "department": "Sales"})
        return await original(mailbox, contact_id, *a, **kw)

    world.graph.update_contact = person_edits_first  # type: ignore[method-assign]
    changed = world.emulators.bc.update_contact(people[2]["id"], {"jobTitle": "BC title"})
    world.emulators.graph.reset_counters()

    report = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                 bc_changes=BcSnapshot.changes([changed]))

    assert edits == 1
    assert report.execution is not None and report.execution.failures == []
    contact = _by_email(await world.folder())["p2@example.com"]
    assert contact["jobTitle"] == "BC title", "BC is master"
    assert _patches(world, "graph") == 2, "the stale write was refused, then written again"
    audits = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.CONFLICT)
    assert audits and audits[0].details["outlook"].get("job_title") == "Outlook title"
    # The link holds the final versions: the same change again writes nothing.
    again = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                bc_changes=BcSnapshot.changes([changed]),
                                read_outlook_delta=True)
    assert again.execution is not None and sum(again.execution.writes.values()) == 0

@pytest.mark.parametrize("stale_status", [412, 409])
async def test_bc_edited_between_our_read_and_our_write_bc_wins(
    world: World, stale_status: int
) -> None:
    world.emulators.bc.config.stale_etag_status = stale_status  # both BC readings
    people = await _linked_people(world)
    setup = world.setup()
    bc_id = people[3]["id"]
    original = world.bc.update_contact
    edits = 0

    async def person_edits_first(contact_id: str, *a: Any, **kw: Any) -> Any:
        nonlocal edits
        if contact_id == bc_id and edits == 0:  # after our read, before our write
            edits += 1
            world.emulators.bc.update_contact(bc_id, {"jobTitle": "BC title"})
        return await original(contact_id, *a, **kw)

    world.bc.update_contact = person_edits_first  # type: ignore[method-assign]
    graph_id = _by_email(await world.folder())["p3@example.com"]["id"]
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {"jobTitle": "Outlook title"})

    report = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                 read_outlook_delta=True)

    assert edits == 1
    assert report.execution is not None and report.execution.failures == []
    assert world.emulators.bc.contact(bc_id)["jobTitle"] == "BC title", "BC is master"
    contact = _by_email(await world.folder())["p3@example.com"]
    assert contact["jobTitle"] == "BC title", "BC's values pushed to Outlook"
    audits = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.CONFLICT)
    assert audits and audits[0].details["outlook"].get("job_title") == "Outlook title"

async def test_a_known_version_saves_the_read_and_a_stale_one_is_refused(world: World) -> None:
    """After one push the Outlook contact is known at the link's version: the next BC change
    is written with If-Match and no GET. An Outlook edit that the applier has not seen yet makes
    that write a 412; the pair is read again and BC wins."""
    people = await _linked_people(world)
    setup = world.setup()
    sessions = Sessions()  # what a long-lived caller (the applier) keeps between runs
    first = world.emulators.bc.update_contact(people[1]["id"], {"jobTitle": "One"})
    await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                        bc_changes=BcSnapshot.changes([first]), sessions=sessions)
    world.emulators.graph.reset_counters()
    second = world.emulators.bc.update_contact(people[1]["id"], {"jobTitle": "Two"})
    await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                        bc_changes=BcSnapshot.changes([second]), sessions=sessions)
    gets = sum(int(r["count"]) for r in world.emulators.graph.counters_snapshot()["by_route"]
               if r["method"] == "GET")
    assert gets == 0 and _patches(world, "graph") == 1, "a known version: one request"

    graph_id = _by_email(await world.folder())["p1@example.com"]["id"]
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {"jobTitle": "Mine"})
    third = world.emulators.bc.update_contact(people[1]["id"], {"jobTitle": "Three"})
    report = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                 bc_changes=BcSnapshot.changes([third]),
                                 sessions=sessions)
    assert report.execution is not None and report.execution.failures == []
    assert _by_email(await world.folder())["p1@example.com"]["jobTitle"] == "Three"
    audits = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.CONFLICT)
    assert audits and audits[0].details["outlook"].get("job_title") == "Mine"

async def test_after_a_full_sync_the_next_change_each_way_needs_no_read(world: World) -> None:
    """A Full sync holds both sides at the versions its links record: the first BC change to a
    contact after it is one Graph PATCH (no GET), the first Outlook change one delta read and
    one BC PATCH (no BC GET), for a caller that keeps the user's session (the applier)."""
    people = await _linked_people(world)
    setup = world.setup()
    world.emulators.graph.reset_counters()
    world.emulators.bc.reset_counters()
    changed = world.emulators.bc.update_contact(people[0]["id"], {"jobTitle": "From BC"})
    await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                        bc_changes=BcSnapshot.changes([changed]), sessions=world.sessions)
    assert _requests(world, "graph") == {"PATCH": 1}, "a BC change: the Outlook write only"

    graph_id = _by_email(await world.folder())["p3@example.com"]["id"]
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {"jobTitle": "From Outlook"})
    world.emulators.graph.reset_counters()
    world.emulators.bc.reset_counters()
    await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                        read_outlook_delta=True, sessions=world.sessions)
    assert world.emulators.bc.contact(people[3]["id"])["jobTitle"] == "From Outlook"
    assert _requests(world, "bc") == {"PATCH": 1}, "an Outlook change: the BC write only"
    assert _requests(world, "graph") == {"GET": 1}, "and the delta read"


def _requests(world: World, service: str) -> dict[str, int]:
    emulator = world.emulators.graph if service == "graph" else world.emulators.bc
    out: dict[str, int] = {}
    for row in emulator.counters_snapshot()["by_route"]:
        out[row["method"]] = out.get(row["method"], 0) + int(row["count"])
    return {method: n for method, n in out.items() if n}


async def test_a_stale_bc_snapshot_is_not_pushed_back(world: World) -> None:
    """A snapshot older than the version the link holds (we wrote a newer one meanwhile)
    costs no write: pushing it would put old values back into Outlook."""
    people = await _linked_people(world)
    setup = world.setup()
    old = world.emulators.bc.update_contact(people[4]["id"], {"jobTitle": "Old"})
    new = world.emulators.bc.update_contact(people[4]["id"], {"jobTitle": "New"})
    await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                        bc_changes=BcSnapshot.changes([new]))
    world.emulators.graph.reset_counters()
    report = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                 bc_changes=BcSnapshot.changes([old]))
    assert report.execution is not None and sum(report.execution.writes.values()) == 0
    assert _patches(world, "graph") == 0
    assert _by_email(await world.folder())["p4@example.com"]["jobTitle"] == "New"


@pytest.mark.parametrize("stale_status", [412, 409])
async def test_full_sync_replans_a_pair_another_worker_wrote_meanwhile(
    world: World, stale_status: int
) -> None:
    """A second applier (or a person) writes the BC contact between a Full sync's listing and
    its write: the 412 (or BC's 409 Request_EntityChanged) costs one re-read of that pair, not
    a failed run, and BC's values win."""
    world.emulators.bc.config.stale_etag_status = stale_status
    people = await _linked_people(world)
    bc_id = people[1]["id"]
    original = world.bc.update_contact
    edits = 0

    async def other_worker_writes_first(contact_id: str, *a: Any, **kw: Any) -> Any:
        nonlocal edits
        if contact_id == bc_id and edits == 0:  # after our listing, before our write
            edits += 1
            world.emulators.bc.update_contact(bc_id, {"jobTitle": "Written by the other"})
        return await original(contact_id, *a, **kw)

    world.bc.update_contact = other_worker_writes_first  # type: ignore[method-assign]
    graph_id = _by_email(await world.folder())["p1@example.com"]["id"]
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {"jobTitle": "Outlook title"})

    report = await world.sync(SyncMode.FULL)

    assert edits == 1
    assert report.execution is not None and report.execution.failures == [], "no failed pair"
    assert world.emulators.bc.contact(bc_id)["jobTitle"] == "Written by the other"
    contact = _by_email(await world.folder())["p1@example.com"]
    assert contact["jobTitle"] == "Written by the other", "BC's values pushed to Outlook"
    again = await world.sync(SyncMode.FULL)
    assert again.execution is not None and sum(again.execution.writes.values()) == 0


async def test_a_bc_contact_adopting_the_users_own_outlook_contact_is_audited_and_conditional(
    world: World,
) -> None:
    """A new BC contact whose email the user's own Outlook contact has (a partial view: the
    change feed): the contact is adopted, not duplicated; the values it loses are audited,
    and the write carries If-Match, so an edit made meanwhile is refused, read and audited
    too instead of being overwritten unseen."""
    setup = world.setup()
    folder_id = await world.graph.find_or_create_folder(MAILBOX, setup.folder_name)
    own = world.emulators.graph.person_create_contact(MAILBOX, folder_id, {
        "displayName": "Jo Own", "jobTitle": "Outlook title",
        "emailAddresses": [{"address": "jo@example.com"}]})
    person = world.emulators.bc.create_contact(
        {"displayName": "Jo BC", "email": "jo@example.com", "type": "Person",
         "jobTitle": "BC title"})
    original = world.graph.update_contact
    edits = 0

    async def person_edits_first(mailbox: str, contact_id: str, *a: Any, **kw: Any) -> Any:
        nonlocal edits
        if contact_id == own["id"] and edits == 0:  # after our search, before our write
            edits += 1
            world.emulators.graph.person_update_contact(MAILBOX, own["id"],
                                                        {"jobTitle": "Edited title"})
        return await original(mailbox, contact_id, *a, **kw)

    world.graph.update_contact = person_edits_first  # type: ignore[method-assign]
    report = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                 bc_changes=BcSnapshot.changes([person]))

    assert report.execution is not None and report.execution.failures == []
    folder = await world.folder()
    assert [c["id"] for c in folder] == [own["id"]], "adopted, not created a second time"
    assert folder[0]["jobTitle"] == "BC title", "BC is master"
    assert _patches(world, "graph") == 2, "the write met the edit (If-Match), then went again"
    audits = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.DUPLICATE)
    assert [a.details["outlook"].get("job_title") for a in audits] == ["Edited title"]


@pytest.mark.parametrize(("folder", "stops"), [(60, False), (30, True)])
async def test_the_delete_rail_weighs_a_batch_of_deletions_against_the_whole_folder(
    world: World, folder: int, stops: bool
) -> None:
    """A near-real-time batch loads only its own links, yet the mass-delete rail counts the
    whole folder: 25 BC deletions (over the floor of 20) leave a folder of 60 at a share of 0.5
    (25 < 30), and stop in a folder of 30, which keeps every contact."""
    people = await _linked_people(world, folder)
    setup = world.setup(max_delete_share=0.5)
    gone = [p["id"] for p in people[:25]]
    for bc_id in gone:
        world.emulators.bc.delete_contact(bc_id)

    report = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                 bc_changes=BcSnapshot.changes([], deleted_ids=gone))

    left = {c["emailAddresses"][0]["address"] for c in await world.folder()}
    if stops:
        assert report.stop is not None and "of 30 contacts" in str(report.stop), str(report.stop)
        assert len(left) == folder, "the rail withheld every deletion"
    else:
        assert report.stop is None, str(report.stop)
        assert left == {f"p{i}@example.com" for i in range(25, folder)}
