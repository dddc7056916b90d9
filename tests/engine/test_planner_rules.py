"""The sync rules as a table: each row is a behaviour a user would notice (docs/architecture.md
4-7)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from contactsync.engine import mapping as m
from contactsync.engine.actions import (
    Action,
    Audit,
    CreateInBc,
    CreateInOutlook,
    DeleteFromOutlook,
    DropLink,
    FindInBc,
    FindInOutlook,
    NeedsRead,
    Reason,
    SaveLink,
    Skip,
    UpdateBc,
    UpdateOutlook,
)
from contactsync.engine.links import Link, LinkOrigin, SyncMode
from contactsync.engine.planner import (
    UNREAD,
    BcSnapshot,
    OutlookSnapshot,
    Plan,
    plan_contact,
    plan_user,
)
from contactsync.engine.rails import MassDeleteStop
from contactsync.schemas.setup import OutlookDeletePolicy, UserSetup

USER = "anna@contoso.com"


def bc(bc_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "@odata.etag": f'W/"{bc_id}-1"',
        "id": bc_id,
        "type": "Person",
        "displayName": f"Person {bc_id.upper()}",
        "email": f"{bc_id}@example.com",
        "city": "Seattle",
        "phoneNumber": "+1 555 0100",
        "privacyBlocked": False,
        "lastModifiedDateTime": "2026-05-01T10:00:00Z",
        **fields,
    }


def synced(contact: dict[str, Any], graph_id: str, **fields: Any) -> dict[str, Any]:
    """The Outlook contact as we would have written it from `contact`."""
    body = m.graph_fields_from_canonical(m.canonical_from_bc(contact), contact["id"])
    return {
        "id": graph_id,
        "changeKey": f"{graph_id}-ck1",
        "@odata.etag": f'W/"{graph_id}-ck1"',
        "createdDateTime": "2026-01-01T00:00:00Z",
        "lastModifiedDateTime": "2026-05-01T10:00:00Z",
        **body,
        **fields,
    }


def own(graph_id: str, **fields: Any) -> dict[str, Any]:
    """A contact the user made in Outlook (no BC tag)."""
    return {
        "id": graph_id,
        "changeKey": f"{graph_id}-ck1",
        "@odata.etag": f'W/"{graph_id}-ck1"',
        "createdDateTime": "2026-02-01T00:00:00Z",
        "lastModifiedDateTime": "2026-05-02T10:00:00Z",
        "displayName": f"Own {graph_id}",
        "emailAddresses": [{"address": f"{graph_id}@example.com"}],
        **fields,
    }


def link(contact: dict[str, Any], outlook: dict[str, Any], **kw: Any) -> Link:
    return Link(
        user_id=USER,
        bc_id=contact["id"],
        graph_id=outlook["id"],
        bc_etag=contact["@odata.etag"],
        graph_change_key=outlook["changeKey"],
        synced_hash=m.content_hash(m.canonical_from_bc(contact)),
        origin=kw.pop("origin", LinkOrigin.BC),
        **kw,
    )


def changed_bc(contact: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**contact, "@odata.etag": f'W/"{contact["id"]}-2"', **fields}


def changed_outlook(contact: dict[str, Any], **fields: Any) -> dict[str, Any]:
    key = contact["id"] + "-ck2"
    return {**contact, "changeKey": key, "@odata.etag": f'W/"{key}"', **fields}


def sig(action: Action) -> tuple[Any, ...]:
    """A short, readable signature of an action for the table."""
    if isinstance(action, CreateInOutlook):
        return ("create_outlook", action.bc_id)
    if isinstance(action, UpdateOutlook):
        return ("update_outlook", action.graph_id)
    if isinstance(action, DeleteFromOutlook):
        return ("delete_outlook", action.graph_id, action.reason.value)
    if isinstance(action, CreateInBc):
        return ("create_bc", action.graph_id)
    if isinstance(action, UpdateBc):
        return ("update_bc", action.bc_id, tuple(sorted(action.changes)))
    if isinstance(action, SaveLink):
        return ("save_link", action.link.bc_id, action.link.graph_id)
    if isinstance(action, DropLink):
        return ("drop_link", action.bc_id, action.graph_id)
    if isinstance(action, Audit):
        return ("audit", action.reason.value)
    if isinstance(action, Skip):
        return ("skip", action.reason.value)
    if isinstance(action, FindInOutlook):
        return ("find_outlook", action.bc_id, action.email)
    if isinstance(action, FindInBc):
        return ("find_bc", action.graph_id, action.email)
    assert isinstance(action, NeedsRead)
    return ("read", action.bc_id, action.graph_id)


B1 = bc("b1")
G1 = synced(B1, "g1")
L1 = link(B1, G1)


@dataclass
class Row:
    rule: str
    bc: BcSnapshot | None
    outlook: OutlookSnapshot | None
    links: list[Link]
    expected: list[tuple[Any, ...]]
    setup: dict[str, Any] = field(default_factory=dict)
    mode: SyncMode = SyncMode.FULL
    since: datetime | None = None


def full(*contacts: dict[str, Any]) -> BcSnapshot:
    return BcSnapshot.full(contacts)


def folder(*contacts: dict[str, Any]) -> OutlookSnapshot:
    return OutlookSnapshot.full(contacts)


def searched(snap: OutlookSnapshot, *found: dict[str, Any]) -> OutlookSnapshot:
    """`snap` after the runner searched the folder for b1 (FindInOutlook) and found `found`."""
    return dataclasses.replace(snap, contacts=(*snap.contacts, *found),
                               searched=frozenset({"b1"}))


def bc_searched(snap: BcSnapshot, *emails: str) -> BcSnapshot:
    """`snap` after the runner searched BC for these emails (FindInBc)."""
    return dataclasses.replace(snap, searched_emails=frozenset(emails))


# The user's own contact with B1's email and a job title BC does not have.
TWIN = own("g9", emailAddresses=[{"address": "B1@example.com"}], jobTitle="Buyer")


ROWS = [
    Row("new BC person is created in Outlook", full(B1), folder(), [],
        [("create_outlook", "b1"), ("save_link", "b1", "")]),
    Row("a company contact does not sync", full(bc("b1", type="Company")), folder(), [],
        [("skip", "not_person")]),
    Row("a contact without email does not sync", full(bc("b1", email="")), folder(), [],
        [("skip", "no_email")]),
    Row("a contact without name does not sync", full(bc("b1", displayName=" ")), folder(), [],
        [("skip", "no_name")]),
    Row("a privacy-blocked contact does not sync", full(bc("b1", privacyBlocked=True)),
        folder(), [], [("skip", "privacy_blocked")]),
    Row("a contact outside the user's filter does not sync", full(bc("b1", city="Paris")),
        folder(), [], [("skip", "filtered_out")], setup={"contact_filter": {"city": "Seattle"}}),
    Row("in sync: nothing to do", full(B1), folder(G1), [L1], []),
    Row("BC edit is pushed, every mapped field", full(changed_bc(B1, city="Redmond")),
        folder(G1), [L1], [("update_outlook", "g1"), ("save_link", "b1", "g1")]),
    Row("Outlook edit updates BC, only what differs",
        full(B1), folder(changed_outlook(G1, jobTitle="Buyer")), [L1],
        [("update_bc", "b1", ("jobTitle",)), ("save_link", "b1", "g1")]),
    Row("both edited: BC wins, the Outlook version goes to the audit",
        full(changed_bc(B1, city="Redmond")), folder(changed_outlook(G1, jobTitle="Buyer")),
        [L1], [("audit", "conflict"), ("update_outlook", "g1"), ("save_link", "b1", "g1")]),
    Row("our own write echoing back (same version) costs nothing",
        full(changed_bc(B1, city="Redmond")), folder(G1),
        [link(changed_bc(B1, city="Redmond"), G1)], []),
    Row("a new version with the same content costs nothing",
        full(changed_bc(B1)), folder(changed_outlook(G1)), [L1], []),
    Row("a duplicate found by email: linked, BC wins, Outlook's values audited",
        full(B1), folder(own("g9", emailAddresses=[{"address": " B1@Example.com "}])), [],
        [("audit", "duplicate_found"), ("update_outlook", "g9"), ("save_link", "b1", "g9")]),
    Row("a new Outlook contact: BC is searched by its email before creating",
        full(), folder(own("g9")), [], [("find_bc", "g9", "g9@example.com")]),
    Row("a new Outlook contact is created in BC", bc_searched(full(), "g9@example.com"),
        folder(own("g9")), [], [("create_bc", "g9"), ("save_link", "", "g9")]),
    Row("the BC search finds a contact with the email: linked, BC wins, no create",
        bc_searched(full(bc("b9", email="G9@example.com")), "g9@example.com"),
        folder(own("g9", displayName="Person B9")), [],
        [("audit", "duplicate_found"), ("update_outlook", "g9"), ("save_link", "b9", "g9")]),
    Row("creating in BC can be turned off", full(), folder(own("g9")), [],
        [("skip", "create_in_bc_off")], setup={"create_in_bc": False}),
    Row("an Outlook contact without email is not created in BC", full(),
        folder(own("g9", emailAddresses=[])), [], [("skip", "outlook_no_email")]),
    Row("an Outlook contact without name is not created in BC", full(),
        folder(own("g9", displayName="")), [], [("skip", "outlook_no_name")]),
    Row("BC contact deleted: removed from the folder", full(), folder(G1), [L1],
        [("delete_outlook", "g1", "bc_deleted"), ("drop_link", "b1", "g1")]),
    Row("BC contact privacy-blocked: removed from the folder",
        full(changed_bc(B1, privacyBlocked=True)), folder(G1), [L1],
        [("delete_outlook", "g1", "privacy_blocked"), ("drop_link", "b1", "g1")]),
    Row("privacy-blocked: an Outlook edit never reaches BC",
        full(bc("b1", privacyBlocked=True)), folder(changed_outlook(G1, jobTitle="X")), [L1],
        [("audit", "privacy_blocked"), ("delete_outlook", "g1", "privacy_blocked"),
         ("drop_link", "b1", "g1")]),
    Row("privacy-blocked: an unlinked Outlook twin is left alone",
        full(bc("b1", privacyBlocked=True)), folder(own("g9", emailAddresses=[
            {"address": "b1@example.com"}])), [], [("skip", "privacy_blocked")]),
    Row("BC contact leaves the filter: removed from the folder",
        full(changed_bc(B1, city="Paris")), folder(G1), [L1],
        [("delete_outlook", "g1", "filtered_out"), ("drop_link", "b1", "g1")],
        setup={"contact_filter": {"city": "Seattle"}}),
    Row("an Outlook contact we did not put there is never deleted for a BC reason",
        full(bc("b1", city="Paris")), folder(own("g9", emailAddresses=[
            {"address": "b1@example.com"}])), [], [("skip", "bc_match_not_synced")],
        setup={"contact_filter": {"city": "Seattle"}}),
    Row("deleted in Outlook: recreated from BC", full(B1), folder(), [L1],
        [("drop_link", "b1", "g1"), ("create_outlook", "b1"), ("save_link", "b1", "")]),
    Row("deleted in Outlook with policy unlink: only unlinked", full(B1), folder(), [L1],
        [("drop_link", "b1", "g1")], setup={"outlook_delete_policy": "unlink"}),
    Row("a delta's removed id counts as deleted in Outlook: search the folder before recreating",
        BcSnapshot.changes([B1]), OutlookSnapshot.delta([{"id": "g1", "@removed": {}}]), [L1],
        [("find_outlook", "b1", "b1@example.com")], mode=SyncMode.SYNC),
    Row("deleted in Outlook, folder searched, nothing found: recreated",
        BcSnapshot.changes([B1]), searched(OutlookSnapshot.delta([{"id": "g1", "@removed": {}}])),
        [L1], [("drop_link", "b1", "g1"), ("create_outlook", "b1"), ("save_link", "b1", "")],
        mode=SyncMode.SYNC),
    Row("deleted in Outlook, the search finds the user's own with its email: adopted, audited",
        BcSnapshot.changes([B1]), searched(OutlookSnapshot.delta([{"id": "g1", "@removed": {}}]),
                                           TWIN), [L1],
        [("drop_link", "b1", "g1"), ("audit", "duplicate_found"), ("update_outlook", "g9"),
         ("save_link", "b1", "g9")], mode=SyncMode.SYNC),
    Row("a BC snapshot older than the version the link holds is an echo: nothing is written",
        BcSnapshot.changes([changed_bc(B1, city="Old",
                                       lastModifiedDateTime="2026-04-01T00:00:00+00:00")]),
        OutlookSnapshot.delta([G1]),
        [link(B1, G1, bc_modified=datetime(2026, 5, 1, 10, tzinfo=UTC))], [],
        mode=SyncMode.SYNC),
    Row("an Outlook version equal to the link's is our write's echo: nothing is written",
        BcSnapshot.changes([]), OutlookSnapshot.delta([G1]), [L1], [], mode=SyncMode.SYNC),
    Row("a tagged Outlook contact whose BC contact was not read: read it first",
        None, OutlookSnapshot.delta([G1]), [], [("read", "b1", "")], mode=SyncMode.SYNC),
    Row("deleted in Outlook, BC not read, policy recreate: read BC first",
        None, OutlookSnapshot.delta([{"id": "g1", "@removed": {}}]), [L1],
        [("read", "b1", "")], mode=SyncMode.SYNC),
    Row("deleted in Outlook, BC not read, policy unlink: only unlinked",
        None, OutlookSnapshot.delta([{"id": "g1", "@removed": {}}]), [L1],
        [("drop_link", "b1", "g1")], setup={"outlook_delete_policy": "unlink"},
        mode=SyncMode.SYNC),
    Row("a new BC person, folder seen in part: search it before creating",
        BcSnapshot.changes([B1]), None, [], [("find_outlook", "b1", "b1@example.com")],
        mode=SyncMode.SYNC),
    Row("a new BC person, folder searched, nothing found: created",
        BcSnapshot.changes([B1]), searched(OutlookSnapshot()), [],
        [("create_outlook", "b1"), ("save_link", "b1", "")], mode=SyncMode.SYNC),
    Row("a new BC person, the search finds our create from before a crash: linked, no write",
        BcSnapshot.changes([B1]), searched(OutlookSnapshot(), G1), [],
        [("save_link", "b1", "g1")], mode=SyncMode.SYNC),
    Row("adopt by email: the search finds the user's own contact; linked, BC wins, audited",
        BcSnapshot.changes([B1]), searched(OutlookSnapshot(), TWIN), [],
        [("audit", "duplicate_found"), ("update_outlook", "g9"), ("save_link", "b1", "g9")],
        mode=SyncMode.SYNC),
    Row("a lost link is found again by our BC-id tag", full(B1), folder(G1), [],
        [("save_link", "b1", "g1")]),
    Row("two Outlook contacts with one BC id: the linked one stays",
        full(B1), folder(G1, synced(B1, "g2", createdDateTime="2025-01-01T00:00:00Z")), [L1],
        [("delete_outlook", "g2", "duplicate_bc_id")]),
    Row("two Outlook contacts with one BC id and no link: the oldest stays",
        full(B1), folder(G1, synced(B1, "g0", createdDateTime="2025-01-01T00:00:00Z")), [],
        [("save_link", "b1", "g0"), ("delete_outlook", "g1", "duplicate_bc_id")]),
    Row("a tagged contact whose BC contact is gone is removed", full(), folder(G1), [],
        [("delete_outlook", "g1", "bc_deleted")]),
    Row("two Outlook contacts with one email and no BC: one is created, one skipped",
        bc_searched(full(), "x@example.com"),
        folder(own("g1", emailAddresses=[{"address": "x@example.com"}]),
                       own("g2", emailAddresses=[{"address": "X@example.com"}],
                           createdDateTime="2026-03-01T00:00:00Z")), [],
        [("create_bc", "g1"), ("save_link", "", "g1"), ("skip", "duplicate_email")]),
    Row("a BC contact whose email the folder already syncs is not created twice",
        full(B1, bc("b2", email="B1@example.com")), folder(G1), [L1],
        [("skip", "email_in_use")]),
    Row("Sync mode: a BC contact unchanged since the last sync is not created",
        BcSnapshot.changes([B1]), None, [], [], mode=SyncMode.SYNC,
        since=datetime(2026, 6, 1, tzinfo=UTC)),
    Row("Full mode creates it whatever the dates", full(B1), folder(), [],
        [("create_outlook", "b1"), ("save_link", "b1", "")],
        since=datetime(2026, 6, 1, tzinfo=UTC)),
    Row("Sync mode: a BC contact missing from a partial snapshot is unknown, not deleted",
        BcSnapshot.changes([]), folder(G1), [L1], [], mode=SyncMode.SYNC),
    Row("BC not read: nothing is deleted", None, folder(G1), [L1], []),
    Row("Outlook not read: nothing is recreated", full(B1), None, [L1], []),
    Row("BC changed, Outlook not read: read it first",
        full(changed_bc(B1, city="Redmond")), None, [L1], [("read", "", "g1")]),
    Row("Outlook changed, BC not read: read it first",
        None, OutlookSnapshot.delta([changed_outlook(G1, jobTitle="X")]), [L1],
        [("read", "b1", "")], mode=SyncMode.SYNC),
    Row("an Outlook edit that takes the contact out of the filter: BC gets it, folder drops it",
        full(B1), folder(changed_outlook(G1, businessAddress={"city": "Paris"})), [L1],
        [("update_bc", "b1", ("city",)), ("delete_outlook", "g1", "filtered_out"),
         ("drop_link", "b1", "g1")], setup={"contact_filter": {"city": "Seattle"}}),
    Row("a new Outlook contact outside the filter is created in BC but not linked",
        bc_searched(full(), "g9@example.com"), folder(own("g9", businessAddress={"city": "Paris"})),
        [], [("create_bc", "g9")], setup={"contact_filter": {"city": "Seattle"}}),
    Row("blanking the email in Outlook never blanks it in BC",
        full(B1), folder(changed_outlook(G1, emailAddresses=[])), [L1],
        [("skip", "outlook_invalid"), ("save_link", "b1", "g1")]),
    Row("a linked contact tagged with another BC id is retagged (the link wins)",
        full(B1), folder(synced(B1, "g1", singleValueExtendedProperties=[
            {"id": m.BC_ID_PROPERTY, "value": "b7"}])), [L1],
        [("update_outlook", "g1"), ("save_link", "b1", "g1")]),
    Row("a phone with letters from Outlook is skipped, the rest syncs",
        full(B1), folder(changed_outlook(G1, businessPhones=["call me"], jobTitle="CFO")),
        [L1], [("update_bc", "b1", ("jobTitle",)), ("save_link", "b1", "g1")]),
]


def run(row: Row) -> Plan:
    setup = UserSetup(user_id=USER, mailbox=USER, **row.setup)
    return plan_user(row.bc, row.outlook, row.links, setup, row.mode, since=row.since)


@pytest.mark.parametrize("row", ROWS, ids=[r.rule for r in ROWS])
def test_rule(row: Row) -> None:
    plan = run(row)
    assert plan.stopped_reason is None
    assert sorted(map(sig, plan.actions)) == sorted(row.expected)


def test_no_action_type_can_delete_a_bc_contact() -> None:
    # every delete the table plans removes one of the row's Outlook contacts, never a BC one
    deletes = 0
    for row in ROWS:
        outlook_ids = {c["id"] for c in (row.outlook.contacts if row.outlook else ())}
        outlook_ids |= (row.outlook.removed_ids if row.outlook else frozenset())
        outlook_ids |= {link.graph_id for link in row.links}
        bc_ids = {c["id"] for c in (row.bc.contacts if row.bc else ())}
        for action in run(row).actions:
            if isinstance(action, DeleteFromOutlook):
                deletes += 1
                assert action.graph_id in outlook_ids - bc_ids, (row.rule, action)
    assert deletes > 0, "the table plans deletes, so the loop above checks them"
    # the action vocabulary has no BC delete at all
    import contactsync.engine.actions as actions

    assert not [name for name in dir(actions) if "delete" in name.lower() and "bc" in name.lower()]


def test_adopting_by_email_audits_outlook_values_and_writes_with_if_match() -> None:
    """The user's own Outlook contact that a BC contact adopts (found by the folder search a
    partial plan asks for): the values it loses are audited, the write is conditional."""
    first = plan_user(BcSnapshot.changes([B1]), None, [], UserSetup(user_id=USER, mailbox=USER),
                      SyncMode.SYNC)
    assert first.reads.outlook_searches == {("b1", "b1@example.com")} and not first.writes
    plan = plan_user(BcSnapshot.changes([B1]), searched(OutlookSnapshot(), TWIN), [],
                     UserSetup(user_id=USER, mailbox=USER), SyncMode.SYNC)
    audit = next(a for a in plan.actions if isinstance(a, Audit))
    assert audit.reason is Reason.DUPLICATE_FOUND
    assert audit.outlook_values.get("job_title") == "Buyer"
    update = next(a for a in plan.actions if isinstance(a, UpdateOutlook))
    assert update.if_match == TWIN["@odata.etag"]


def test_conflict_audit_carries_the_outlook_values_that_lost() -> None:
    row = next(r for r in ROWS if r.rule.startswith("both edited"))
    audit = next(a for a in run(row).actions if isinstance(a, Audit))
    assert audit.outlook_values == {"job_title": "Buyer", "city": "Seattle"}
    assert audit.bc_values == {"job_title": "", "city": "Redmond"}
    update = next(a for a in run(row).actions if isinstance(a, UpdateOutlook))
    assert update.fields["jobTitle"] is None  # the push overwrites, blanks included
    assert update.if_match == 'W/"g1-ck2"'


def test_update_bc_is_conditional_and_reports_skipped_fields() -> None:
    row = next(r for r in ROWS if r.rule.startswith("a phone with letters"))
    update = next(a for a in run(row).actions if isinstance(a, UpdateBc))
    assert update.etag == B1["@odata.etag"]
    assert [(i.field, i.reason) for i in update.issues] == [
        ("phoneNumber", "must not contain letters")
    ]


def test_created_bc_contact_is_a_person_and_links_to_outlook() -> None:
    row = next(r for r in ROWS if r.rule == "a new Outlook contact is created in BC")
    create, save = run(row).actions
    assert isinstance(create, CreateInBc) and isinstance(save, SaveLink)
    assert create.fields["type"] == "Person"
    assert save.link.origin is LinkOrigin.OUTLOOK and save.link.graph_change_key == "g9-ck1"


def _many(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Link]]:
    contacts = [bc(f"b{i}") for i in range(count)]
    outlook = [synced(c, f"g{i}") for i, c in enumerate(contacts)]
    return contacts, outlook, [link(c, o) for c, o in zip(contacts, outlook, strict=True)]


def test_mass_delete_rail_stops_a_run_that_would_empty_the_folder() -> None:
    _contacts, outlook, links = _many(30)
    setup = UserSetup(user_id=USER, mailbox=USER)
    plan = plan_user(BcSnapshot.full([]), OutlookSnapshot.full(outlook), links, setup,
                     SyncMode.FULL)
    assert plan.stop == MassDeleteStop(removing=30, folder=30, vanished=0, share=0.1, floor=20)
    assert plan.stopped_reason is not None and "30 of 30" in plan.stopped_reason
    assert not [a for a in plan.actions if isinstance(a, DeleteFromOutlook)]
    assert plan.summary.withheld == 30
    forced = plan_user(BcSnapshot.full([]), OutlookSnapshot.full(outlook), links, setup,
                       SyncMode.FULL, force=True)
    assert forced.stopped_reason is None and forced.summary.deleted_from_outlook == 30


def test_mass_delete_rail_stops_an_empty_outlook_listing_too() -> None:
    contacts, _outlook, links = _many(30)
    setup = UserSetup(user_id=USER, mailbox=USER)
    plan = plan_user(BcSnapshot.full(contacts), OutlookSnapshot.full([]), links, setup,
                     SyncMode.FULL)
    assert plan.stopped_reason is not None
    assert not plan.writes


def test_the_rail_counts_the_contacts_really_in_the_folder() -> None:
    # The store outlived the mailbox's contents: 94 links, a folder that holds 25 of them.
    contacts, outlook, links = _many(94)
    setup = UserSetup(user_id=USER, mailbox=USER)
    plan = plan_user(BcSnapshot.full(contacts), OutlookSnapshot.full(outlook[:25]), links, setup,
                     SyncMode.FULL)
    assert plan.stopped_reason is not None and not plan.writes
    assert plan.stopped_reason.startswith(
        "would remove 69 contacts: 0 of the 25 in the folder and 69 linked ones no longer in it")


def test_small_deletes_pass_the_rail() -> None:
    contacts, outlook, links = _many(30)
    setup = UserSetup(user_id=USER, mailbox=USER)  # 3 of 30 is 10%, but under the floor of 20
    plan = plan_user(BcSnapshot.full(contacts[3:]), OutlookSnapshot.full(outlook), links, setup,
                     SyncMode.FULL)
    assert plan.stopped_reason is None and plan.summary.deleted_from_outlook == 3


def test_summary_counts() -> None:
    b2, b3 = bc("b2"), bc("b3", type="Company")
    plan = plan_user(
        bc_searched(full(changed_bc(B1, city="X"), b2, b3), "g9@example.com"),
        folder(changed_outlook(G1, jobTitle="Y"), own("g9")),
        [L1],
        UserSetup(user_id=USER, mailbox=USER),
        SyncMode.FULL,
    )
    s = plan.summary
    assert (s.created_in_outlook, s.created_in_bc, s.updated_outlook, s.conflicts) == (1, 1, 1, 1)
    assert s.created == 2 and s.updated == 1
    assert s.skipped == {"not_person": 1}


def test_plan_contact_single_pair_and_unread_sides() -> None:
    setup = UserSetup(user_id=USER, mailbox=USER)
    assert plan_contact(B1, G1, L1, setup, SyncMode.SYNC) == []
    assert plan_contact(UNREAD, UNREAD, L1, setup, SyncMode.SYNC) == []
    actions = plan_contact(changed_bc(B1, city="Z"), UNREAD, L1, setup, SyncMode.SYNC)
    assert actions == [NeedsRead(graph_id="g1")]
    delete_policy = UserSetup(user_id=USER, mailbox=USER,
                              outlook_delete_policy=OutlookDeletePolicy.UNLINK)
    assert [sig(a) for a in plan_contact(UNREAD, None, L1, delete_policy, SyncMode.SYNC)] == [
        ("drop_link", "b1", "g1")
    ]


def test_a_read_whose_answer_nothing_conditional_checks_asks_for_bc_as_it_is_now() -> None:
    """A recreate (or the link of a tagged contact) writes Outlook only: no If-Match would
    refuse a BC contact changed or deleted since a version known, so BC must be read now. A
    pull writes BC with If-Match: a version known may answer its read."""
    setup = UserSetup(user_id=USER, mailbox=USER)
    removed = OutlookSnapshot.delta([{"id": "g1", "@removed": {}}])
    recreate = plan_user(None, removed, [L1], setup, SyncMode.SYNC).reads
    assert (recreate.bc_ids, recreate.current_bc_ids) == ({"b1"}, {"b1"})
    tagged = plan_user(None, OutlookSnapshot.delta([G1]), [], setup, SyncMode.SYNC).reads
    assert tagged.current_bc_ids == {"b1"}
    edited = OutlookSnapshot.delta([changed_outlook(G1, jobTitle="Buyer")])
    pull = plan_user(None, edited, [L1], setup, SyncMode.SYNC).reads
    assert (pull.bc_ids, pull.current_bc_ids) == ({"b1"}, frozenset())


def test_bc_ids_compare_in_any_case() -> None:
    """Issue 12, defect 7: BC ids are GUIDs; an Outlook tag or a link that spells one in upper
    case is the same BC contact (no duplicate created, no retag, no write)."""
    guid = "5d115c9c-44e3-ea11-bb43-000d3a2feca1"
    person = bc(guid)
    tagged = synced(bc(guid.upper()), "g-upper")
    setup = UserSetup(user_id=USER, mailbox=USER)
    by_tag = plan_user(full(person), folder(tagged), [], setup, SyncMode.FULL)
    assert not [a for a in by_tag.actions if isinstance(a, CreateInOutlook | UpdateOutlook)]
    assert [sig(a) for a in by_tag.actions if isinstance(a, SaveLink)] == [
        ("save_link", guid, "g-upper")
    ]
    same = synced(person, "g-lower")
    upper_link = link(bc(guid.upper(), **{"@odata.etag": person["@odata.etag"]}), same)
    by_link = plan_user(full(person), folder(same), [upper_link], setup, SyncMode.FULL)
    assert list(by_link.actions) == []
