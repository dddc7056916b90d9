"""After a restart the near-real-time path answers "what does the other side hold?" from the
link rows' synced content (engine/synced.py), not by a GET: an edit on one side costs the
write to the other and nothing more. The write is conditional (If-Match), so a side that
changed behind our back refuses it, is read afresh, and BC still wins.

Each run below passes a new `Sessions()`: an applier that has just started and holds no
version of any contact in memory."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from contactsync.engine.links import SyncMode
from contactsync.engine.planner import BcSnapshot
from contactsync.store.records import AuditKind
from contactsync.sync.runner import Sessions, SyncReport, apply_changes
from tests.sync.conftest import MAILBOX, World


def _by_email(contacts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {(c.get("emailAddresses") or [{}])[0].get("address", "").lower(): c for c in contacts}


def _requests(world: World, service: str) -> dict[str, int]:
    """Requests on contacts by method since the last reset (the emulator's counters). A
    started applier also looks its user's folder up, once (sync/session.py), not per change."""
    emulator = world.emulators.graph if service == "graph" else world.emulators.bc
    out: dict[str, int] = {}
    for row in emulator.counters_snapshot()["by_route"]:
        if "/contacts" not in row["route"]:
            continue
        out[row["method"]] = out.get(row["method"], 0) + int(row["count"])
    return {method: n for method, n in out.items() if n}


def _refused(world: World, service: str, status: int = 412) -> int:
    emulator = world.emulators.graph if service == "graph" else world.emulators.bc
    return int(emulator.counters_snapshot()["by_status"].get(str(status), 0))


def _reset_counters(world: World) -> None:
    world.emulators.graph.reset_counters()
    world.emulators.bc.reset_counters()


async def _synced_people(world: World, n: int = 5) -> list[dict[str, Any]]:
    """BC persons synced to Outlook by a Full sync, then a Sync (which stores the delta link,
    so a later delta holds just the change)."""
    bc = world.emulators.bc
    people = [bc.create_contact({"displayName": f"P {i}", "email": f"p{i}@example.com",
                                 "type": "Person"}) for i in range(n)]
    await world.sync(SyncMode.FULL)
    await world.sync()
    return people


async def _restarted(world: World, **kw: Any) -> SyncReport:
    """A change applied by an applier that has just started (nothing known in memory)."""
    report = await apply_changes(world.setup(), graph=world.graph, bc=world.bc,
                                 store=world.store, sessions=Sessions(), **kw)
    assert report.execution is not None and report.execution.failures == []
    return report


async def _graph_id(world: World, email: str) -> str:
    return str(_by_email(await world.folder())[email]["id"])


async def test_after_a_restart_an_outlook_edit_reaches_bc_with_one_read_and_one_write(
    world: World,
) -> None:
    people = await _synced_people(world)
    graph_id = await _graph_id(world, "p2@example.com")
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {"jobTitle": "From Outlook"})
    _reset_counters(world)

    await _restarted(world, read_outlook_delta=True)

    assert world.emulators.bc.contact(people[2]["id"])["jobTitle"] == "From Outlook"
    assert _requests(world, "graph") == {"GET": 1}, "the delta read only"
    assert _requests(world, "bc") == {"PATCH": 1}, "the BC write only: no GET of the contact"


async def test_after_a_restart_a_bc_edit_reaches_outlook_without_a_read_keeping_its_own_fields(
    world: World,
) -> None:
    """The Outlook contact's own emails, phones, categories and unmapped fields, added by the
    person in an edit that was synced, survive the next BC change written without a read."""
    people = await _synced_people(world)
    graph_id = await _graph_id(world, "p1@example.com")
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {
        "jobTitle": "Buyer",
        "emailAddresses": [{"address": "p1@example.com", "name": "P 1"},
                           {"address": "p1.home@example.org", "name": "home"}],
        "businessPhones": ["+1 425 555 0100", "+1 425 555 0101"],
        "categories": ["Business Central", "VIP"],
        "department": "Sales", "personalNotes": "met at the fair"})
    await apply_changes(world.setup(), graph=world.graph, bc=world.bc, store=world.store,
                        read_outlook_delta=True, sessions=world.sessions)
    assert world.emulators.bc.contact(people[1]["id"])["jobTitle"] == "Buyer"
    changed = world.emulators.bc.update_contact(people[1]["id"], {"companyName": "Contoso"})
    _reset_counters(world)

    await _restarted(world, bc_changes=BcSnapshot.changes([changed]))

    assert _requests(world, "graph") == {"PATCH": 1}, "the Outlook write only: no GET"
    assert _requests(world, "bc") == {}
    contact = _by_email(await world.folder())["p1@example.com"]
    assert contact["companyName"] == "Contoso"
    assert [e["address"] for e in contact["emailAddresses"]] == [
        "p1@example.com", "p1.home@example.org"]
    assert contact["businessPhones"] == ["+1 425 555 0100", "+1 425 555 0101"]
    assert "VIP" in contact["categories"]
    assert (contact["department"], contact["personalNotes"]) == ("Sales", "met at the fair")


async def test_an_outlook_edit_not_yet_seen_refuses_the_write_and_bc_still_wins(
    world: World,
) -> None:
    """A person edited the Outlook contact (its notification not applied yet) when a BC change
    arrives at a restarted applier: the write made from the synced content meets the newer
    version (412), the pair is read afresh, BC's values win and Outlook's are audited."""
    people = await _synced_people(world)
    graph_id = await _graph_id(world, "p3@example.com")
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {
        "jobTitle": "Outlook title", "businessPhones": ["+1 425 555 0199"]})
    changed = world.emulators.bc.update_contact(people[3]["id"], {"jobTitle": "BC title"})
    _reset_counters(world)

    await _restarted(world, bc_changes=BcSnapshot.changes([changed]))

    assert _refused(world, "graph") == 1, "the write from the synced content was refused"
    contact = _by_email(await world.folder())["p3@example.com"]
    assert contact["jobTitle"] == "BC title", "BC is master"
    assert world.emulators.bc.contact(people[3]["id"])["jobTitle"] == "BC title"
    audits = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.CONFLICT)
    assert audits and audits[0].details["outlook"].get("job_title") == "Outlook title"


@pytest.mark.parametrize("stale_status", [412, 409])
async def test_a_bc_edit_not_yet_seen_refuses_the_write_and_bc_still_wins(
    world: World, stale_status: int,
) -> None:
    """The other way: BC changed (its change feed not applied yet) when an Outlook edit
    arrives at a restarted applier. BC refuses the write made from the synced content (412,
    or 409 Request_EntityChanged), the pair is read afresh and BC's values reach Outlook."""
    world.emulators.bc.config.stale_etag_status = stale_status
    people = await _synced_people(world)
    world.emulators.bc.update_contact(people[4]["id"], {"jobTitle": "BC title"})
    graph_id = await _graph_id(world, "p4@example.com")
    world.emulators.graph.person_update_contact(MAILBOX, graph_id, {"jobTitle": "Outlook title"})
    _reset_counters(world)

    await _restarted(world, read_outlook_delta=True)

    assert _refused(world, "bc", stale_status) == 1, "the write from the synced content"
    assert world.emulators.bc.contact(people[4]["id"])["jobTitle"] == "BC title", "BC is master"
    contact = _by_email(await world.folder())["p4@example.com"]
    assert contact["jobTitle"] == "BC title", "BC's values pushed to Outlook"


async def test_a_link_saved_without_content_is_read_as_before(world: World) -> None:
    """A link saved before links kept their content (its column NULL) costs the GET it did."""
    people = await _synced_people(world)
    with world.store.engine.begin() as conn:
        conn.execute(text("UPDATE links SET synced_content = NULL"))
    changed = world.emulators.bc.update_contact(people[0]["id"], {"jobTitle": "From BC"})
    _reset_counters(world)

    await _restarted(world, bc_changes=BcSnapshot.changes([changed]))

    assert _requests(world, "graph") == {"GET": 1, "PATCH": 1}
    assert _by_email(await world.folder())["p0@example.com"]["jobTitle"] == "From BC"


@pytest.mark.parametrize("deleted", ["bc", "outlook"])
async def test_a_contact_deleted_behind_our_back_is_read_and_handled_as_before(
    world: World, deleted: str,
) -> None:
    """The side taken from the synced content is gone (its deletion not applied yet): the
    write answers 404, the pair is read afresh and planned as the GET would have: a BC contact
    deleted leaves the folder, an Outlook contact deleted is created again from BC."""
    people = await _synced_people(world)
    bc_id, graph_id = people[2]["id"], await _graph_id(world, "p2@example.com")
    if deleted == "bc":
        world.emulators.bc.delete_contact(bc_id)
        world.emulators.graph.person_update_contact(MAILBOX, graph_id, {"jobTitle": "Mine"})
        await _restarted(world, read_outlook_delta=True)
        assert "p2@example.com" not in _by_email(await world.folder())
    else:
        world.emulators.graph.person_delete_contact(MAILBOX, graph_id)
        changed = world.emulators.bc.update_contact(bc_id, {"jobTitle": "From BC"})
        await _restarted(world, bc_changes=BcSnapshot.changes([changed]))
        assert _by_email(await world.folder())["p2@example.com"]["jobTitle"] == "From BC"


async def test_a_contact_deleted_on_both_sides_is_not_created_again_from_the_link(
    world: World,
) -> None:
    """Deleted in BC and, by the person, in Outlook, neither deletion applied yet: the
    Outlook deletion alone would create the contact again from BC (recreate policy), and that
    create writes nothing to BC, so no If-Match could refuse a BC contact known only from
    the link's content. BC is read as it is now: the contact stays gone and its link goes."""
    people = await _synced_people(world)
    graph_id = await _graph_id(world, "p2@example.com")
    world.emulators.bc.delete_contact(people[2]["id"])
    world.emulators.graph.person_delete_contact(MAILBOX, graph_id)
    _reset_counters(world)

    await _restarted(world, read_outlook_delta=True)

    assert "p2@example.com" not in _by_email(await world.folder())
    assert _requests(world, "bc") == {"GET": 1}, "BC read as it is now"
    assert world.store.links.for_ids(MAILBOX, [people[2]["id"]], [graph_id]) == []


async def test_a_bc_deletion_whose_outlook_delete_landed_unanswered_is_not_undone(
    world: World,
) -> None:
    """The broker-outage story: a BC deletion reaches the applier, Graph deletes the Outlook
    contact but every answer to the DELETE is lost, so the pair fails and keeps its link.
    Graph's notification of that deletion comes next: the link's Outlook contact is gone,
    BC's is not read yet. BC is read as it is now (gone): the link is dropped, and the contact
    deleted in BC is not created again from what the link kept of it."""
    people = await _synced_people(world)
    bc_id, graph_id = people[2]["id"], await _graph_id(world, "p2@example.com")
    world.emulators.bc.delete_contact(bc_id)
    graph = world.emulators.graph
    graph.add_fault(kind="drop_response", status=503, method="DELETE", route="contacts")
    graph.add_fault(kind="status", status=503, method="DELETE", route="contacts", count=10)
    failed = await apply_changes(world.setup(), graph=world.graph, bc=world.bc,
                                 store=world.store, bc_changes=BcSnapshot.changes([], [bc_id]),
                                 sessions=Sessions())
    assert failed.execution is not None and failed.execution.failures, "the DELETE's answer lost"
    graph.clear_faults()

    await _restarted(world, read_outlook_delta=True)

    assert "p2@example.com" not in _by_email(await world.folder())
    assert world.store.links.for_ids(MAILBOX, [bc_id], [graph_id]) == []
