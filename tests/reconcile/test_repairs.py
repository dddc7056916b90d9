"""What one reconcile repairs, against the emulators, as a user would see the folder and BC.

Drift is made with nothing running (no pipeline, so no notification is ever acted on): edits
on both sides, contacts added and deleted, a link row lost, a duplicated Outlook contact, a
contact leaving the filter, an expired delta token, lost sync marks. One reconcile repairs it
all; a second finds nothing to do and writes nothing.
"""

from __future__ import annotations

from typing import Any

from contactsync.engine.links import SyncMode
from contactsync.engine.mapping import BC_ID_PROPERTY
from contactsync.store.records import AuditKind
from contactsync.sync.reconcile import UserReport, last_reports, reconcile_user
from tests.sync.conftest import MAILBOX, World


def _person(i: int, **extra: Any) -> dict[str, Any]:
    return {"displayName": f"Person {i}", "email": f"p{i}@example.com", "type": "Person",
            "city": "Seattle", **extra}


def _by_email(contacts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in contacts:
        out.setdefault((c.get("emailAddresses") or [{}])[0].get("address", "").lower(),
                       []).append(c)
    return out


async def reconcile(world: World, **kw: Any) -> UserReport:
    return await reconcile_user(world.setup(), graph=world.graph, bc=world.bc,
                                store=world.store, run_id="test-run", **kw)


async def _synced(world: World, n: int) -> list[dict[str, Any]]:
    """n Seattle persons in BC, the user filtered on Seattle, everything in sync."""
    people = [world.emulators.bc.create_contact(_person(i)) for i in range(n)]
    world.setup(contact_filter={"city": "Seattle"})
    first = await reconcile(world)
    assert first.status == "ok" and first.created_outlook == n
    return people


async def _folder_id(world: World) -> str:
    return next(str(f["id"]) for f in await world.graph.list_folders(MAILBOX)
                if f["displayName"] == "Business Central")


async def test_one_reconcile_repairs_every_kind_of_drift_and_a_second_writes_nothing(
        world: World):
    bc, graph = world.emulators.bc, world.emulators.graph
    people = await _synced(world, 12)
    await world.sync(SyncMode.SYNC)  # the near-real-time path now holds a delta link
    delta_link = world.store.state.get(MAILBOX).delta_link
    assert delta_link
    folder_id = await _folder_id(world)
    folder = {e: cs[0] for e, cs in _by_email(await world.folder()).items()}

    # Drift, behind the pipeline's back:
    bc.update_contact(people[0]["id"], {"jobTitle": "Buyer"})  # stale in Outlook
    graph.person_update_contact(MAILBOX, folder["p1@example.com"]["id"],
                                {"jobTitle": "Poet"})  # stale in BC
    new_in_bc = bc.create_contact(_person(100))  # missing in Outlook
    graph.person_create_contact(MAILBOX, folder_id, {  # missing in BC
        "displayName": "Grace Hopper", "emailAddresses": [{"address": "grace@example.com"}]})
    graph.person_delete_contact(MAILBOX, folder["p2@example.com"]["id"])  # deleted by hand
    bc.delete_contact(people[3]["id"])  # its link's BC contact is gone
    assert world.store.links.delete(MAILBOX, people[4]["id"])  # a lost link row
    graph.person_create_contact(MAILBOX, folder_id, {  # a copy carrying the same BC id
        "displayName": "Person 5", "emailAddresses": [{"address": "p5@example.com"}],
        "singleValueExtendedProperties": [{"id": BC_ID_PROPERTY, "value": people[5]["id"]}]})
    bc.update_contact(people[6]["id"], {"city": "London"})  # leaves the user's filter
    assert graph.expire_delta_tokens(MAILBOX) >= 1  # the delta link now answers 410

    report = await reconcile(world)

    assert report.status == "ok", report
    after = _by_email(await world.folder())
    assert after["p0@example.com"][0]["jobTitle"] == "Buyer"
    assert bc.contact(people[1]["id"])["jobTitle"] == "Poet"
    assert "p100@example.com" in after and "p2@example.com" in after
    assert [c["displayName"] for c in world.bc_persons() if c["email"] == "grace@example.com"] \
        == ["Grace Hopper"]
    assert "p3@example.com" not in after and "p6@example.com" not in after
    assert len(after["p5@example.com"]) == 1, "one contact per BC id is kept"
    assert world.store.links.get(MAILBOX, people[4]["id"]) is not None, "the link is back"
    assert world.store.links.get(MAILBOX, people[3]["id"]) is None
    assert sorted(after) == sorted(
        [f"p{i}@example.com" for i in (0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 100)]
        + ["grace@example.com"])
    assert (report.created_outlook, report.created_bc) == (2, 1)  # p100, p2 again; Grace
    assert report.deleted_outlook == 3  # p3 gone, p6 out of the filter, the p5 copy
    assert report.updated_outlook == 1 and report.updated_bc == 1
    assert new_in_bc["id"] in {c["_ext"].get(BC_ID_PROPERTY) for c in await world.folder()}

    # A second reconcile finds nothing to do; so does the near-real-time path, whose expired
    # delta link starts over (a whole first round) without writing anything.
    before = world.writes()
    again = await reconcile(world)
    assert again.status == "ok" and again.changes == 0 and again.writes == 0
    incremental = await world.sync(SyncMode.SYNC)
    assert incremental.failed == 0 and world.writes() == before
    assert world.store.state.get(MAILBOX).delta_link not in (None, delta_link)


async def test_lost_sync_marks_start_over_for_that_user(world: World):
    bc = world.emulators.bc
    people = await _synced(world, 6)
    await world.sync(SyncMode.SYNC)
    world.store.state.update(MAILBOX, delta_link=None, last_sync_at=None,
                             last_full_sync_at=None)  # the user's state is lost
    bc.update_contact(people[0]["id"], {"jobTitle": "Buyer"})
    report = await reconcile(world)
    assert report.status == "ok" and report.updated_outlook == 1 and report.linked == 0
    assert _by_email(await world.folder())["p0@example.com"][0]["jobTitle"] == "Buyer"
    state = world.store.state.get(MAILBOX)
    assert state.last_full_sync_at is not None, "the marks are set again"
    before = world.writes()
    assert (await reconcile(world)).writes == 0
    await world.sync(SyncMode.SYNC)
    assert world.writes() == before


async def test_a_dry_run_reports_the_repairs_and_changes_nothing(world: World):
    bc = world.emulators.bc
    people = await _synced(world, 5)
    bc.update_contact(people[0]["id"], {"jobTitle": "Buyer"})
    bc.create_contact(_person(50))
    bc.delete_contact(people[1]["id"])
    folder_before = await world.folder()
    links_before = world.store.links.for_user(MAILBOX)
    writes_before = world.writes()

    dry = await reconcile(world, dry_run=True)

    assert dry.dry_run and dry.status == "ok"
    assert (dry.updated_outlook, dry.created_outlook, dry.deleted_outlook) == (1, 1, 1)
    assert world.writes() == writes_before and await world.folder() == folder_before
    assert world.store.links.for_user(MAILBOX) == links_before
    assert [r.details["run_id"] for r in world.store.audit.list_records(
        user_id=MAILBOX, kind=AuditKind.RECONCILE_REPORT)] == ["test-run"], \
        "only the first (real) run is kept; the dry run is not"


async def test_the_rail_stops_a_reconcile_against_an_emptied_source_until_forced(world: World):
    bc = world.emulators.bc
    people = await _synced(world, 30)
    for person in people:  # BC comes back empty
        bc.delete_contact(person["id"])

    stopped = await reconcile(world)

    assert stopped.status == "stopped" and "would remove 30 of 30" in stopped.reason
    assert len(await world.folder()) == 30, "nothing was removed"
    [(run_id, kept)] = last_reports(world.store, [MAILBOX])
    assert (run_id, kept.status, kept.withheld) == ("test-run", "stopped", 30)
    assert world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.DELETE_RAIL)

    forced = await reconcile(world, force=True)
    assert forced.status == "ok" and forced.deleted_outlook == 30
    assert await world.folder() == []


async def test_a_failing_read_is_never_taken_for_everything_deleted(world: World):
    await _synced(world, 25)
    # BC fails every listing: the user's reconcile fails and reports; the folder stays.
    world.emulators.bc.inject_fault(kind="status", status=500, count=10_000, route="contacts")
    failed = await reconcile(world)
    assert failed.status == "failed" and failed.reason
    assert len(await world.folder()) == 25
    world.emulators.bc.faults.clear()
    assert (await reconcile(world)).writes == 0
