"""BC's "Sync" and "Full sync" against the emulators, as a user would see the result."""

from __future__ import annotations

from contactsync.engine.links import SyncMode
from contactsync.engine.mapping import BC_ID_PROPERTY
from contactsync.engine.planner import BcSnapshot
from contactsync.store.records import AuditKind
from contactsync.sync.runner import apply_changes
from tests.sync.conftest import MAILBOX, World


def _person(name: str, email: str, **extra: str) -> dict[str, str]:
    return {"displayName": name, "email": email, "type": "Person", **extra}


def _by_email(contacts: list[dict]) -> dict[str, dict]:
    return {(c.get("emailAddresses") or [{}])[0].get("address", "").lower(): c for c in contacts}


async def test_full_sync_puts_exactly_the_synchronizable_persons_in_the_folder(world: World):
    bc = world.emulators.bc
    ada = bc.create_contact(_person("Ada Lovelace", "ada@example.com", city="London",
                                    jobTitle="Analyst", phoneNumber="+44 20 1234"))
    bc.create_contact(_person("No Mail", ""))
    bc.create_contact({"displayName": "Contoso Ltd", "email": "info@contoso.com",
                       "type": "Company"})
    bc.create_contact(_person("Hidden Person", "hidden@example.com", privacyBlocked=True))

    report = await world.sync(SyncMode.FULL)

    folder = await world.folder()
    assert [c["displayName"] for c in folder] == ["Ada Lovelace"]
    contact = folder[0]
    assert contact["givenName"] == "Ada" and contact["surname"] == "Lovelace"
    assert contact["jobTitle"] == "Analyst" and contact["businessPhones"] == ["+44 20 1234"]
    assert contact["businessAddress"]["city"] == "London"
    assert contact["_ext"][BC_ID_PROPERTY] == ada["id"]
    assert report.summary.created_in_outlook == 1
    assert report.summary.skipped == {"no_email": 1, "not_person": 1, "privacy_blocked": 1}


async def test_a_second_sync_with_no_change_writes_nothing(world: World):
    for i in range(30):
        world.emulators.bc.create_contact(_person(f"Person {i}", f"p{i}@example.com"))
    await world.sync(SyncMode.FULL)
    before = world.writes()
    full = await world.sync(SyncMode.FULL)
    incremental = await world.sync(SyncMode.SYNC)
    assert world.writes() == before
    assert full.execution is not None and sum(full.execution.writes.values()) == 0
    assert incremental.execution is not None and sum(incremental.execution.writes.values()) == 0


async def test_the_user_filter_selects_which_bc_contacts_reach_the_folder(world: World):
    bc = world.emulators.bc
    bc.create_contact(_person("Sea One", "s1@example.com", city="Seattle"))
    bc.create_contact(_person("Red Two", "r2@example.com", city="Redmond"))
    bc.create_contact(_person("Lon Three", "l3@example.com", city="London"))
    world.setup(contact_filter={"city": "Seattle|Redmond"})
    await world.sync(SyncMode.FULL)
    assert sorted(c["displayName"] for c in await world.folder()) == ["Red Two", "Sea One"]

    # The contact that leaves the filter leaves the folder.
    world.setup(contact_filter={"city": "Seattle"})
    await world.sync(SyncMode.FULL)
    assert [c["displayName"] for c in await world.folder()] == ["Sea One"]


async def test_edits_flow_both_ways_and_bc_wins_when_both_changed(world: World):
    bc = world.emulators.bc
    ada = bc.create_contact(_person("Ada Lovelace", "ada@example.com", jobTitle="Analyst"))
    bob = bc.create_contact(_person("Bob Babbage", "bob@example.com", jobTitle="Engineer"))
    await world.sync(SyncMode.FULL)
    folder = _by_email(await world.folder())
    graph = world.emulators.graph

    # Outlook edit of Ada reaches BC; BC edit of Bob reaches Outlook.
    graph.person_update_contact(MAILBOX, folder["ada@example.com"]["id"], {"jobTitle": "Countess"})
    bc.update_contact(bob["id"], {"jobTitle": "Inventor"})
    await world.sync(SyncMode.SYNC)
    assert bc.contact(ada["id"])["jobTitle"] == "Countess"
    assert _by_email(await world.folder())["bob@example.com"]["jobTitle"] == "Inventor"

    # Both sides change Ada: BC's value wins, Outlook's losing value is in the audit log.
    graph.person_update_contact(MAILBOX, folder["ada@example.com"]["id"], {"jobTitle": "Poet"})
    bc.update_contact(ada["id"], {"jobTitle": "Mathematician"})
    report = await world.sync(SyncMode.SYNC)
    assert _by_email(await world.folder())["ada@example.com"]["jobTitle"] == "Mathematician"
    assert bc.contact(ada["id"])["jobTitle"] == "Mathematician"
    assert report.summary.conflicts == 1
    audit = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.CONFLICT)
    assert audit and audit[0].details["outlook"]["job_title"] == "Poet"


async def test_new_outlook_contacts_with_name_and_email_are_created_in_bc(world: World):
    await world.sync(SyncMode.FULL)  # creates the folder
    folder_id = next(f["id"] for f in await world.graph.list_folders(MAILBOX)
                     if f["displayName"] == "Business Central")
    graph = world.emulators.graph
    graph.person_create_contact(MAILBOX, folder_id, {
        "displayName": "Grace Hopper", "givenName": "Grace", "surname": "Hopper",
        "emailAddresses": [{"address": "grace@example.com", "name": "Grace Hopper"}],
        "companyName": "Navy"})
    graph.person_create_contact(MAILBOX, folder_id, {"displayName": "No Email Person"})
    report = await world.sync(SyncMode.SYNC)
    persons = world.bc_persons()
    assert [(p["displayName"], p["email"], p["companyName"]) for p in persons] == [
        ("Grace Hopper", "grace@example.com", "Navy")]
    assert report.summary.created_in_bc == 1
    assert report.summary.skipped.get("outlook_no_email") == 1
    # Linked: an edit in BC now reaches that Outlook contact.
    world.emulators.bc.update_contact(persons[0]["id"], {"jobTitle": "Rear Admiral"})
    await world.sync(SyncMode.SYNC)
    assert _by_email(await world.folder())["grace@example.com"]["jobTitle"] == "Rear Admiral"


async def test_an_outlook_contact_matching_a_bc_email_is_linked_not_duplicated(world: World):
    await world.sync(SyncMode.FULL)
    folder_id = next(f["id"] for f in await world.graph.list_folders(MAILBOX)
                     if f["displayName"] == "Business Central")
    # Outside the user's filter: the listing does not hold it, the look-up by email does.
    world.setup(contact_filter={"city": "Seattle"})
    world.emulators.bc.create_contact(_person("Dup Person", "DUP@EXAMPLE.COM", city="Paris"))
    world.emulators.graph.person_create_contact(MAILBOX, folder_id, {
        "displayName": "Dup Person", "emailAddresses": [{"address": "dup@example.com"}]})
    await world.sync(SyncMode.FULL)
    assert len(world.bc_persons()) == 1


async def test_deletes_bc_removes_from_folder_outlook_deletion_is_recreated(world: World):
    bc = world.emulators.bc
    keep = [bc.create_contact(_person(f"Keep {i}", f"k{i}@example.com")) for i in range(30)]
    gone = bc.create_contact(_person("Gone Soon", "gone@example.com"))
    await world.sync(SyncMode.FULL)
    bc.delete_contact(gone["id"])
    folder = _by_email(await world.folder())
    world.emulators.graph.person_delete_contact(MAILBOX, folder["k0@example.com"]["id"])
    await world.sync(SyncMode.FULL)
    after = _by_email(await world.folder())
    assert "gone@example.com" not in after
    assert "k0@example.com" in after, "BC is master: a contact deleted in Outlook comes back"
    assert len(after) == len(keep)
    assert all(p["id"] != gone["id"] for p in world.bc_persons())


async def test_dry_run_reports_the_plan_and_writes_nothing(world: World):
    for i in range(5):
        world.emulators.bc.create_contact(_person(f"P {i}", f"p{i}@example.com"))
    before = world.writes()
    report = await world.sync(SyncMode.FULL, dry_run=True)
    assert report.summary.created_in_outlook == 5 and len(report.planned_writes) == 5
    assert world.writes() == before
    folders = await world.graph.list_folders(MAILBOX)
    assert all(f["displayName"] != "Business Central" for f in folders), "no folder created"


async def test_mass_delete_rail_stops_against_an_emptied_source_unless_forced(world: World):
    bc = world.emulators.bc
    people = [bc.create_contact(_person(f"P {i}", f"p{i}@example.com")) for i in range(40)]
    await world.sync(SyncMode.FULL)
    for person in people[:30]:
        bc.delete_contact(person["id"])
    stopped = await world.sync(SyncMode.FULL)
    assert stopped.stopped_reason and len(await world.folder()) == 40
    rail = world.store.audit.list_records(user_id=MAILBOX, kind=AuditKind.DELETE_RAIL)
    assert len(rail) == 1
    forced = await world.sync(SyncMode.FULL, force=True)
    assert forced.stopped_reason is None and len(await world.folder()) == 10


async def test_a_run_that_fails_midway_is_finished_by_the_next_run_without_duplicates(
    world: World,
):
    bc = world.emulators.bc
    for i in range(45):
        bc.create_contact(_person(f"P {i}", f"p{i}@example.com"))
    # The first $batch lands but its answer is lost (the client finds those by their tag);
    # every later one fails: the run stops midway with part of the folder written.
    world.emulators.graph.add_fault(kind="drop_response", status=504, count=1, route="$batch")
    world.emulators.graph.add_fault(kind="status", status=503, count=1000, route="$batch")
    first = await world.sync(SyncMode.FULL)
    assert 0 < first.failed < 45 and len(await world.folder()) == 45 - first.failed
    assert world.store.state.get(MAILBOX).last_sync_at is None, "a failed run moves no mark"
    world.emulators.graph.clear_faults()
    second = await world.sync(SyncMode.FULL)
    assert second.failed == 0
    folder = await world.folder()
    tags = [c["_ext"][BC_ID_PROPERTY] for c in folder]
    assert len(folder) == 45 and len(set(tags)) == 45, "one Outlook contact per BC contact"


async def test_near_real_time_changes_apply_without_listing_either_side(world: World):
    bc = world.emulators.bc
    people = [bc.create_contact(_person(f"P {i}", f"p{i}@example.com")) for i in range(20)]
    await world.sync(SyncMode.FULL)
    setup = world.setup()
    # A BC change arrives as a snapshot from the change feed.
    changed = bc.update_contact(people[3]["id"], {"jobTitle": "Buyer"})
    world.emulators.graph.reset_counters()
    world.emulators.bc.reset_counters()
    report = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                 bc_changes=BcSnapshot.changes([changed]))
    assert report.summary.updated_outlook == 1
    assert _by_email(await world.folder())["p3@example.com"]["jobTitle"] == "Buyer"
    listings = [r for r in world.emulators.bc.counters_snapshot()["by_route"]
                if r["method"] == "GET"]
    assert listings == [], "the snapshot is enough: BC is not listed"
    # An Outlook edit arrives as a notification hint: the folder's delta is read.
    folder = _by_email(await world.folder())
    world.emulators.graph.person_update_contact(MAILBOX, folder["p5@example.com"]["id"],
                                                {"jobTitle": "Manager"})
    await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                        read_outlook_delta=True)
    assert bc.contact(people[5]["id"])["jobTitle"] == "Manager"
    # Applying the same hint again writes nothing (our own writes echo back unchanged).
    again = await apply_changes(setup, graph=world.graph, bc=world.bc, store=world.store,
                                read_outlook_delta=True)
    assert again.execution is not None and sum(again.execution.writes.values()) == 0
