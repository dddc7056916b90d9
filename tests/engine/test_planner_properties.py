"""Property tests of the planner: random two-sided states with links, a plan, a tiny pure
"apply" (dict manipulation, the way Graph and BC would store the writes), and a second plan.

Invariants: the second plan writes nothing; no BC contact is ever deleted; one BC contact never
ends up with two Outlook contacts; BC's values win every conflict; privacy-blocked BC contacts
are never changed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contactsync.engine import mapping as m
from contactsync.engine.actions import (
    Action,
    CreateInBc,
    CreateInOutlook,
    DeleteFromOutlook,
    DropLink,
    Reason,
    SaveLink,
    UpdateBc,
    UpdateOutlook,
    is_write,
)
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.links import Link, SyncMode
from contactsync.engine.pair_rules import (
    bc_changed,
    bc_skip_reason,
    outlook_changed,
    plan_contact,
    unchanged_pair,
)
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot, Plan, plan_user
from contactsync.schemas.setup import UserSetup

USER = "u1"
EMAILS = ["a@x.com", "A@X.com ", "b@x.com", "c@x.com", ""]
NAMES = ["Ann Lee", "Bo", "Carl Jan Smit", ""]
CITIES = ["Seattle", "Paris"]
PHONES = ["", "+1 555 0100", "call me"]
TITLES = ["", "Buyer", "T" * 40]
WATERMARK = datetime(2026, 8, 1, tzinfo=UTC)  # the first run's end, as the applier records it
BC_IDS = [f"b{i}" for i in range(6)]
GRAPH_IDS = [f"g{i}" for i in range(6)]


@dataclass
class World:
    bc: dict[str, dict[str, Any]]
    outlook: dict[str, dict[str, Any]]
    links: dict[str, Link]  # by BC id
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def next(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"


bc_contacts = st.builds(
    lambda type_, name, email, city, phone, blocked, version: {
        "type": type_,
        "displayName": name,
        "email": email,
        "city": city,
        "phoneNumber": phone,
        "privacyBlocked": blocked,
        "@odata.etag": version,
        "lastModifiedDateTime": "2026-05-01T10:00:00Z",
    },
    st.sampled_from(["Person", "Person", "Company"]),
    st.sampled_from(NAMES),
    st.sampled_from(EMAILS),
    st.sampled_from(CITIES),
    st.sampled_from(PHONES[:2]),
    st.booleans(),
    st.sampled_from(["v1", "v2"]),
)

outlook_contacts = st.builds(
    lambda name, email, city, phone, title, tag, created, version: {
        "displayName": name,
        "emailAddresses": [{"address": email}] if email else [],
        "businessAddress": {"city": city},
        "businessPhones": [phone] if phone else [],
        "jobTitle": title,
        "createdDateTime": f"2026-01-0{created}T00:00:00Z",
        "changeKey": version,
        **(
            {"singleValueExtendedProperties": [{"id": m.BC_ID_PROPERTY, "value": tag}]}
            if tag
            else {}
        ),
    },
    st.sampled_from(NAMES),
    st.sampled_from(EMAILS),
    st.sampled_from(CITIES),
    st.sampled_from(PHONES),
    st.sampled_from(TITLES),
    st.sampled_from([None, None, *BC_IDS[:4], "b-gone"]),
    st.integers(1, 9),
    st.sampled_from(["k1", "k2"]),
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    bc_ids = draw(st.lists(st.sampled_from(BC_IDS), unique=True, max_size=5))
    graph_ids = draw(st.lists(st.sampled_from(GRAPH_IDS), unique=True, max_size=5))
    bc = {i: {"id": i, **draw(bc_contacts)} for i in bc_ids}
    outlook = {g: {"id": g, **draw(outlook_contacts)} for g in graph_ids}
    link_bc = draw(st.permutations(BC_IDS))
    link_graph = draw(st.permutations(GRAPH_IDS))
    count = draw(st.integers(0, 4))
    links: dict[str, Link] = {}
    for bc_id, graph_id in zip(link_bc[:count], link_graph[:count], strict=True):
        known = bc.get(bc_id)
        links[bc_id] = Link(
            user_id=USER,
            bc_id=bc_id,
            graph_id=graph_id,
            bc_etag=draw(st.sampled_from(["v1", "old"])),
            graph_change_key=draw(st.sampled_from(["k1", "old"])),
            synced_hash=(
                m.content_hash(m.canonical_from_bc(known))
                if known is not None and draw(st.booleans())
                else "stale"
            ),
        )
    return World(bc, outlook, links)


setups = st.builds(
    lambda flt, create, policy: UserSetup(
        user_id=USER,
        mailbox=USER,
        contact_filter=flt,
        create_in_bc=create,
        outlook_delete_policy=policy,
    ),
    st.sampled_from([{}, {"city": "Seattle"}, {"city": "<>Paris", "type": "Person"}]),
    st.booleans(),
    st.sampled_from(["recreate", "unlink"]),
)


def plan(
    world: World, setup: UserSetup, mode: SyncMode = SyncMode.FULL, since: datetime | None = None
) -> Plan:
    return plan_user(
        BcSnapshot.full(world.bc.values()),
        OutlookSnapshot.full(world.outlook.values()),
        world.links.values(),
        setup,
        mode,
        since=since,
        force=True,  # the rail is tested in the rules table; here every plan runs in full
    )


def apply(world: World, the_plan: Plan) -> None:
    """Carry the plan out on dicts, as Graph and BC would store it (new versions on write)."""
    for group in the_plan.groups:
        bc_id = graph_id = bc_etag = change_key = ""
        for action in group:
            if isinstance(action, CreateInOutlook):
                graph_id, change_key = world.next("g"), world.next("k")
                world.outlook[graph_id] = {
                    "id": graph_id,
                    "changeKey": change_key,
                    "createdDateTime": "2026-09-01T00:00:00Z",
                    **action.fields,
                }
            elif isinstance(action, UpdateOutlook):
                change_key = world.next("k")
                current = world.outlook[action.graph_id]
                assert action.if_match in (None, current.get("@odata.etag"))
                world.outlook[action.graph_id] = {
                    **current,
                    **action.fields,
                    "changeKey": change_key,
                }
            elif isinstance(action, DeleteFromOutlook):
                del world.outlook[action.graph_id]
            elif isinstance(action, CreateInBc):
                bc_id, bc_etag = world.next("b"), world.next("e")
                world.bc[bc_id] = {
                    "id": bc_id,
                    "@odata.etag": bc_etag,
                    "privacyBlocked": False,
                    "lastModifiedDateTime": "2026-09-01T00:00:00Z",
                    **action.fields,
                }
            elif isinstance(action, UpdateBc):
                bc_etag = world.next("e")
                current = world.bc[action.bc_id]
                assert action.etag == current["@odata.etag"]
                world.bc[action.bc_id] = {
                    **current,
                    **action.changes,
                    "@odata.etag": bc_etag,
                    "lastModifiedDateTime": "2026-09-01T00:00:00Z",
                }
            elif isinstance(action, DropLink):
                if world.links.get(action.bc_id, None) is not None:
                    del world.links[action.bc_id]
            elif isinstance(action, SaveLink):
                new = action.link
                filled = Link(
                    user_id=new.user_id,
                    bc_id=new.bc_id or bc_id,
                    graph_id=new.graph_id or graph_id,
                    bc_etag=new.bc_etag or bc_etag,
                    bc_modified=new.bc_modified,
                    graph_change_key=new.graph_change_key or change_key,
                    synced_hash=new.synced_hash,
                    origin=new.origin,
                )
                assert filled.bc_id and filled.graph_id and filled.bc_etag
                # the link store keeps one link per BC id and per Graph id
                for key, old in list(world.links.items()):
                    if old.graph_id == filled.graph_id:
                        del world.links[key]
                world.links[filled.bc_id] = filled


def snapshot(world: World) -> World:
    return World(
        {k: dict(v) for k, v in world.bc.items()},
        {k: dict(v) for k, v in world.outlook.items()},
        dict(world.links),
    )


CHECK = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bc_id_of(action: Action) -> str:
    if isinstance(action, SaveLink):
        return action.link.bc_id
    return getattr(action, "bc_id", "")


@CHECK
@given(worlds(), setups, st.sampled_from([SyncMode.FULL, SyncMode.SYNC]))
def test_a_second_plan_writes_nothing(world: World, setup: UserSetup, mode: SyncMode) -> None:
    first = plan(world, setup, mode)
    apply(world, first)
    again = plan(world, setup, mode, since=WATERMARK)
    # Policy "unlink" forgets a contact deleted in Outlook; as in BC (its Contact Sync) it may come
    # back later (a Full sync recreates it; any sync matches it to a same-email contact).
    # Those are the only writes a second plan may make.
    unlinked = {
        a.bc_id
        for a in first.actions
        if isinstance(a, DropLink) and a.reason is Reason.DELETED_IN_OUTLOOK
    }
    groups = [g for g in again.groups if not unlinked & {_bc_id_of(a) for a in g}]
    assert not [a for g in groups for a in g if is_write(a)], groups
    assert not [a for g in groups for a in g if isinstance(a, SaveLink | DropLink)], groups


@CHECK
@given(worlds(), setups)
def test_no_bc_contact_is_ever_deleted_and_blocked_ones_never_change(
    world: World, setup: UserSetup
) -> None:
    before = snapshot(world)
    apply(world, plan(world, setup))
    assert set(before.bc) <= set(world.bc)
    for bc_id, contact in before.bc.items():
        if contact["privacyBlocked"]:
            assert world.bc[bc_id] == contact


@CHECK
@given(worlds(), setups)
def test_one_outlook_contact_per_bc_contact(world: World, setup: UserSetup) -> None:
    apply(world, plan(world, setup))
    tags = [m.bc_id_of(c) for c in world.outlook.values() if m.bc_id_of(c)]
    tagged_existing = [t for t in tags if t in world.bc]
    assert len(tagged_existing) == len(set(tagged_existing))
    graph_ids = [link.graph_id for link in world.links.values()]
    assert len(graph_ids) == len(set(graph_ids))
    for link in world.links.values():
        assert link.graph_id in world.outlook and link.bc_id in world.bc
        # a linked contact carries our tag, or we created the BC side from it
        assert m.bc_id_of(world.outlook[link.graph_id]) in (link.bc_id, "")


@CHECK
@given(worlds(), setups)
def test_bc_wins_every_conflict(world: World, setup: UserSetup) -> None:
    before = snapshot(world)
    flt = ContactFilter.parse(setup.contact_filter)
    conflicts = []
    for bc_id, link in before.links.items():
        bc, outlook = before.bc.get(bc_id), before.outlook.get(link.graph_id)
        if bc is None or outlook is None or bc_skip_reason(bc, flt) is not None:
            continue
        if bc_changed(bc, link) and outlook_changed(outlook, link):
            conflicts.append((bc_id, link.graph_id))
    apply(world, plan(world, setup))
    for bc_id, graph_id in conflicts:
        assert world.bc[bc_id] == before.bc[bc_id]  # BC untouched
        assert m.content_hash(m.canonical_from_graph(world.outlook[graph_id])) == m.content_hash(
            m.canonical_from_bc(before.bc[bc_id])
        )


@CHECK
@given(worlds(), setups, st.sampled_from([SyncMode.FULL, SyncMode.SYNC]))
def test_a_side_not_read_is_never_taken_as_deleted(
    world: World, setup: UserSetup, mode: SyncMode
) -> None:
    links = list(world.links.values())
    without_bc = plan_user(
        None, OutlookSnapshot.full(world.outlook.values()), links, setup, mode, force=True
    )
    for action in without_bc.actions:
        if isinstance(action, DeleteFromOutlook):
            assert action.reason is Reason.DUPLICATE_BC_ID  # a second copy, whatever BC says
        # (Outlook was read: a contact gone from there may be unlinked, by policy)
        assert not (isinstance(action, DropLink) and action.reason is not Reason.DELETED_IN_OUTLOOK)
    without_outlook = plan_user(
        BcSnapshot.full(world.bc.values()), None, links, setup, mode, force=True
    )
    linked = {link.bc_id for link in links}
    for action in without_outlook.actions:
        assert not (isinstance(action, CreateInOutlook) and action.bc_id in linked)
        assert not (isinstance(action, DropLink) and action.reason is Reason.DELETED_IN_OUTLOOK)



@st.composite
def linked_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], Link]:
    """One linked pair whose versions are mostly still the link's (what a full sync meets)."""
    bc = {"id": "b0", **draw(bc_contacts)}
    outlook = {"id": "g0", **draw(outlook_contacts)}
    link = Link(
        user_id=USER, bc_id="b0", graph_id="g0",
        bc_etag=draw(st.sampled_from([bc["@odata.etag"], bc["@odata.etag"], "old"])),
        graph_change_key=draw(st.sampled_from([outlook["changeKey"], outlook["changeKey"], ""])),
        synced_hash=draw(st.sampled_from([m.content_hash(m.canonical_from_bc(bc)), "stale"])),
    )  # fmt: skip
    return bc, outlook, link


@CHECK
@given(linked_pairs(), setups, st.sampled_from([SyncMode.FULL, SyncMode.SYNC]))
def test_the_planners_shortcut_for_unchanged_pairs_skips_only_pairs_with_nothing_to_do(
    pair: tuple[dict[str, Any], dict[str, Any], Link], setup: UserSetup, mode: SyncMode
) -> None:
    """A full sync skips the per-pair rules for pairs whose versions did not move
    (unchanged_pair): it may say so only where the rules themselves plan nothing, and must
    say so for a pair whose versions are the link's, whose tag is its own and which syncs."""
    bc, outlook, link = pair
    flt = ContactFilter.parse(setup.contact_filter)
    if unchanged_pair(bc, outlook, link, flt):
        assert plan_contact(bc, outlook, link, setup, mode, contact_filter=flt) == []
    if (bc["@odata.etag"] == link.bc_etag and outlook["changeKey"] == link.graph_change_key
            and m.bc_id_of(outlook) in ("", link.bc_id) and bc_skip_reason(bc, flt) is None):
        assert unchanged_pair(bc, outlook, link, flt)
