"""The pure planner (docs/architecture.md 3): what to write, given both sides, the links and the
setup.

Two levels, no I/O:
- `plan_contact(bc, outlook, link, setup, mode)`: the actions for one pair (rules in
  pair_rules.py). A side is a wire dict (or a compact record of one, engine/compact.py),
  `None` (known not to exist: deleted, or absent from a complete listing) or `UNREAD` (not
  read: unknown, never taken as deleted). A full sync's snapshot may hold an unchanged Outlook
  contact as a stub (ids, versions, email, tag: engine/compact.py); the rules never know: one
  that reads more of it ends in ContentNotRead, which this module answers with NeedsRead.
- `plan_user(bc, outlook, links, setup, mode)`: pairs a user's contacts and plans every pair.
  Snapshots say what was read: a full listing (`complete`: an absent id is gone), a partial one
  (one changed BC contact, a Graph delta with its removed ids), or None (not read at all).

Pairing, in order: by link; by our BC-id tag on the Outlook contact (a lost link or a retried
create is found again; several carriers of one BC id: keep the linked one, else the oldest,
delete the others); by normalized email (trimmed, case-insensitive), as BC does. One Outlook
contact per email is matched (the oldest; others are skipped as duplicates); a BC contact
prefers an eligible match, then one that is not privacy-blocked (as BC's Contact Sync does).

Mass-delete rail: if the plan would remove (delete, or react to Outlook contacts that vanished
from a listing) more than `max_delete_share` of the folder AND more than `max_delete_floor`
contacts, those groups are withheld and `Plan.stop` (engine/rails.py) says why, unless
`force=True`.

"Changed" compares a side with its link (docs/architecture.md 5): a side whose version (BC ETag or
modified time, Graph changeKey) or content hash equals the link's is unchanged; that is how
our own writes echo back without costing a write. BC contacts sync only when eligible: Type
Person, a name, an email, not privacy-blocked, inside the user's filter (docs/architecture.md 6).

Case table (link = we created or linked the pair):

  link | BC                 | Outlook             | actions
  -----+--------------------+---------------------+----------------------------------------------
  no   | eligible           | none/unread         | CreateInOutlook + SaveLink (Sync mode: only if
       |                    |                     |   BC changed after `since`)
  no   | not eligible       | none/unread         | Skip(reason)
  no   | eligible           | exists (same email  | link; BC wins: UpdateOutlook if content or tag
       |                    |   or our BC-id tag) |   differ + Audit(Outlook values that lost)
  no   | not eligible       | exists, our tag     | DeleteFromOutlook (we put it there)
  no   | not eligible       | exists, no tag      | Skip (never update BC from an unlinked contact)
  no   | none               | exists, our tag     | DeleteFromOutlook(bc_deleted)
  no   | unread             | exists, our tag     | NeedsRead(bc, current)
  no   | none/unread        | exists, no tag      | CreateInBc + SaveLink if it has a name and a
       |                    |                     |   valid email and setup.create_in_bc, else Skip
       |                    |                     |   (outside the user's filter: no SaveLink)
  yes  | none               | exists/unread       | [Audit if Outlook changed] DeleteFromOutlook
       |                    |                     |   + DropLink
  yes  | not eligible       | exists/unread       | same, reason = why (privacy, filter, type...)
  yes  | none/not eligible  | none                | DropLink
  yes  | eligible           | none (deleted there)| policy recreate: DropLink + CreateInOutlook +
       |                    |                     |   SaveLink; policy unlink: DropLink
  yes  | unread             | none                | unlink: DropLink; recreate:
       |                    |                     |   NeedsRead(bc, current)
  yes  | unread             | changed             | NeedsRead(bc)
  yes  | changed            | unread              | NeedsRead(outlook)
  yes  | unchanged          | unchanged           | nothing
  yes  | changed            | unchanged           | UpdateOutlook (every mapped field) + SaveLink
  yes  | unchanged          | changed             | UpdateBc (fields that differ; rejected fields
       |                    |                     |   reported) + SaveLink; if the edit takes it
       |                    |                     |   out of the filter: + DeleteFromOutlook
  yes  | eligible           | tagged with another | UpdateOutlook (the link wins, retag) + SaveLink
       |                    |   BC id             |
  yes  | changed            | changed             | BC wins: UpdateOutlook + Audit(conflict) +
       |                    |                     |   SaveLink
  Nothing ever deletes a BC contact; an equal content on both sides costs no write.

A create in Outlook planned from part of the folder (not `complete`) is first a
FindInOutlook(bc_id, email) unless the snapshot's `searched` holds that BC id: the runner
searches the folder (our tag, then an untagged contact with the email), adds what it found and
plans again, so a found contact is paired by the rows above (adopt by email: link, BC wins,
Audit(duplicate_found), UpdateOutlook with If-Match). A linked contact deleted in Outlook whose
recreate would meet the user's own contact with its email adopts that contact instead.
Likewise a CreateInBc is first a FindInBc(graph_id, email) unless the BC snapshot's
`searched_emails` holds the email: a BC contact found with it is paired by email instead.

Every NeedsRead / FindInOutlook / FindInBc of a plan is gathered in `Plan.reads` (a
ReadRequest): the runner reads exactly that (sync/reads.py), plans again, and hands the
executor only the final plan. A read marked `current` must be the service's answer now, never
a version known (NeedsRead): what the plan does with it writes the other side only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contactsync.engine import mapping as m
from contactsync.engine.actions import (
    READ_ACTIONS,
    Action,
    CreateInBc,
    CreateInOutlook,
    DeleteFromOutlook,
    DropLink,
    FindInBc,
    FindInOutlook,
    NeedsRead,
    Plan,
    PlanSummary,
    ReadRequest,
    Reason,
    SaveLink,
    Skip,
    UpdateOutlook,
    summarize,
)
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.compact import ContentNotRead
from contactsync.engine.echoes import bc_stale, parse_time
from contactsync.engine.links import Link, SyncMode, canon_bc_id
from contactsync.engine.pair_rules import (
    UNREAD,
    Side,
    Unread,
    bc_skip_reason,
    plan_contact,
    unchanged_pair,
)
from contactsync.engine.rails import mass_delete_stop
from contactsync.schemas.setup import OutlookDeletePolicy, UserSetup

__all__ = [
    "UNREAD",
    "BcSnapshot",
    "OutlookSnapshot",
    "Plan",
    "PlanSummary",
    "Side",
    "Unread",
    "plan_contact",
    "plan_user",
]

Contact = Mapping[str, Any]


@dataclass(frozen=True)
class BcSnapshot:
    """BC contacts as read. `complete`: every BC contact that could concern the user is here,
    so a linked id that is absent was deleted (or left the listing's filter: same outcome)."""

    contacts: Sequence[Contact] = ()
    complete: bool = False
    deleted_ids: frozenset[str] = frozenset()  # known deletions (webhook "deleted")
    # Emails (normalized) BC was searched for (FindInBc): its contacts with them are here.
    searched_emails: frozenset[str] = frozenset()

    @classmethod
    def full(cls, contacts: Iterable[Contact]) -> BcSnapshot:
        return cls(tuple(contacts), complete=True)

    @classmethod
    def changes(cls, contacts: Iterable[Contact], deleted_ids: Iterable[str] = ()) -> BcSnapshot:
        return cls(tuple(contacts), complete=False, deleted_ids=frozenset(deleted_ids))


@dataclass(frozen=True)
class OutlookSnapshot:
    """The user's folder as read: a full listing (`complete`) or a delta (changed + removed)."""

    contacts: Sequence[Contact] = ()
    complete: bool = False
    removed_ids: frozenset[str] = frozenset()
    # BC ids (canonical) the folder was searched for (FindInOutlook): what it holds of them
    # is among `contacts`, so a create for them is no longer blind.
    searched: frozenset[str] = frozenset()

    @classmethod
    def full(cls, contacts: Iterable[Contact]) -> OutlookSnapshot:
        return cls(tuple(contacts), complete=True)

    @classmethod
    def delta(cls, items: Iterable[Contact], *, initial_round: bool = False) -> OutlookSnapshot:
        """From Graph delta items; `@removed` entries become removed ids. A delta's first round
        lists the whole folder, so it is complete."""
        changed: list[Contact] = []
        removed: set[str] = set()
        for item in items:
            if "@removed" in item:
                removed.add(m.as_text(item.get("id")))
            else:
                changed.append(item)
        return cls(tuple(changed), complete=initial_round, removed_ids=frozenset(removed))


def _oldest_first(contact: Contact) -> tuple[bool, float, str]:
    created = parse_time(contact.get("createdDateTime"))
    return (created is None, created.timestamp() if created else 0.0, m.as_text(contact["id"]))


def _same(contact_id: str) -> str:
    return contact_id  # Graph ids are case-sensitive


class _Sides:
    """Looks up a side's state by id: the dict, None (known gone) or UNREAD. `key` is the
    id's canonical form (BC ids: any case; Graph ids: as they are)."""

    def __init__(self, contacts: Sequence[Contact], complete: bool, gone: frozenset[str],
                 key: Callable[[str], str] = _same):
        self.key = key
        self.by_id = {key(m.as_text(c.get("id"))): c for c in contacts}
        self.complete = complete
        self.gone = gone if key is _same else frozenset(map(key, gone))

    def state(self, contact_id: str) -> Side:
        contact_id = self.key(contact_id)
        found = self.by_id.get(contact_id)
        if found is not None:
            return found
        return None if self.complete or contact_id in self.gone else UNREAD


def plan_user(
    bc: BcSnapshot | None,
    outlook: OutlookSnapshot | None,
    links: Iterable[Link],
    setup: UserSetup,
    mode: SyncMode,
    *,
    since: datetime | None = None,
    force: bool = False,
) -> Plan:
    """Plan one user's sync. None for a side means it was not read: nothing there is deleted."""
    bc = bc or BcSnapshot()
    outlook = outlook or OutlookSnapshot()
    bc_side = _Sides(bc.contacts, bc.complete, bc.deleted_ids, canon_bc_id)
    outlook_side = _Sides(outlook.contacts, outlook.complete, outlook.removed_ids)
    links = list(links)
    flt = ContactFilter.parse(setup.contact_filter)

    def pair(bc_state: Side, outlook_state: Side, link: Link | None) -> list[Action]:
        try:
            actions = plan_contact(
                bc_state, outlook_state, link, setup, mode, contact_filter=flt, since=since
            )
        except ContentNotRead as unread:  # a full sync's stub: read the contact, plan again
            return [NeedsRead(graph_id=unread.graph_id)]
        for action in actions:
            if isinstance(action, CreateInOutlook) and not outlook.complete and (
                canon_bc_id(action.bc_id) not in outlook.searched
            ):
                # The folder was seen in part: it may hold this contact already (our create
                # before a crash, or the user's own with this email). Find it first.
                return [FindInOutlook(action.bc_id, action.email)]
            if isinstance(action, CreateInBc):
                email = m.as_text(action.fields.get("email"))
                if email and m.normalize_email(email) not in bc.searched_emails:
                    # BC may hold this email outside what was listed: look it up first.
                    return [FindInBc(action.graph_id, email)]
        return actions

    groups: list[tuple[Action, ...]] = []
    removals: list[bool] = []  # per group: does it remove, or react to a vanished contact?
    vanishing: list[bool] = []  # per group: does it react to a linked contact gone from Outlook?
    # The folder's emails once the plan has run (by Graph id; "+bc id" for creates): a contact
    # must not be created where the folder will already hold its email. Built only when a
    # contact is left to pair (a full sync with nothing new never builds 100,000 entries);
    # until then, what the actions change is noted.
    folder_changes: dict[str, str | None] = {}  # None: the contact leaves the folder

    def folder_after() -> dict[str, str]:
        emails = {m.as_text(c.get("id")): m.normalize_email(m.graph_email(c))
                  for c in outlook.contacts}
        for key, email in folder_changes.items():
            if email is None:
                emails.pop(key, None)
            else:
                emails[key] = email
        return emails

    def add(actions: list[Action], vanished: bool = False) -> None:
        if not actions:
            return
        groups.append(tuple(actions))
        removals.append(vanished or any(isinstance(a, DeleteFromOutlook) for a in actions))
        vanishing.append(vanished)
        for a in actions:
            if isinstance(a, DeleteFromOutlook):
                folder_changes[a.graph_id] = None
            elif isinstance(a, UpdateOutlook):
                folder_changes[a.graph_id] = m.normalize_email(m.graph_email(a.fields))
            elif isinstance(a, CreateInOutlook):
                folder_changes["+" + a.bc_id] = m.normalize_email(a.email)

    used_bc = {canon_bc_id(link.bc_id) for link in links}
    used_outlook = {link.graph_id for link in links}
    # Linked Outlook contacts pair by link only: order (oldest first) just the others, once.
    unlinked = sorted(
        (c for c in outlook.contacts if m.as_text(c.get("id")) not in used_outlook),
        key=_oldest_first,
    )
    carriers: dict[str, list[Contact]] = {}
    for contact in unlinked:
        tag = m.bc_id_of(contact)
        if tag:
            carriers.setdefault(tag, []).append(contact)

    twins: dict[str, Contact] | None = None

    def untagged_twin(bc_state: Side) -> Contact | None:
        """For a linked BC contact whose Outlook contact is gone and that would be recreated:
        an unlinked, untagged contact of the folder with its email (the oldest), to link
        instead of creating a second one."""
        nonlocal twins
        recreate = setup.outlook_delete_policy is OutlookDeletePolicy.RECREATE
        if not (recreate and isinstance(bc_state, Mapping)
                and bc_skip_reason(bc_state, flt) is None):
            return None
        if twins is None:
            twins = {}
            for contact in unlinked:
                if not m.bc_id_of(contact):
                    twins.setdefault(m.normalize_email(m.graph_email(contact)), contact)
        found = twins.get(m.normalize_email(m.as_text(bc_state.get("email"))))
        if found is None or m.as_text(found.get("id")) in used_outlook:
            return None
        return found

    def drop_duplicates(bc_id: str, extra: list[Contact]) -> None:
        for dup in extra:
            dup_id = m.as_text(dup.get("id"))
            used_outlook.add(dup_id)
            etag = m.as_text(dup.get("@odata.etag")) or None
            add([DeleteFromOutlook(dup_id, Reason.DUPLICATE_BC_ID, bc_id, etag)])

    # 1. by link
    for link in links:
        outlook_state = outlook_side.state(link.graph_id)
        bc_state = bc_side.state(link.bc_id)
        if isinstance(bc_state, Mapping) and not bc.complete and bc_stale(bc_state, link):
            bc_state = UNREAD  # older than what the link holds: an echo, not a change
        extra = carriers.pop(canon_bc_id(link.bc_id), [])  # tags are canonical
        if outlook_state is None and not extra:
            twin = untagged_twin(bc_state)
            extra = [twin] if twin is not None else []
        if outlook_state is None and extra:
            # ours vanished but another carries our tag, or the user's own has its email
            keeper, *extra = extra
            used_outlook.add(m.as_text(keeper.get("id")))
            actions = pair(bc_state, keeper, None)
            if not any(isinstance(a, NeedsRead) for a in actions):
                actions.insert(0, DropLink(link.bc_id, link.graph_id, Reason.DELETED_IN_OUTLOOK))
            add(actions)
        else:
            if not extra and unchanged_pair(bc_state, outlook_state, link, flt):
                continue  # what pair() would answer, without its work (most of a full sync)
            add(pair(bc_state, outlook_state, link), outlook_state is None)
        drop_duplicates(link.bc_id, extra)

    # 2. by our BC-id tag (no link)
    for tag, tagged in carriers.items():
        keeper, *extra = tagged
        used_outlook.add(m.as_text(keeper.get("id")))
        if tag in bc_side.by_id:
            used_bc.add(tag)
        add(pair(bc_side.state(tag), keeper, None))
        drop_duplicates(tag, extra)

    # 3. by normalized email: the oldest Outlook contact of an email meets the best BC match
    # The first BC contact of each email, and the others of the few emails several share: no
    # list per email (100,000 of them in a full sync).
    bc_by_email: dict[str, Contact] = {}
    bc_more: dict[str, list[Contact]] = {}
    # Only if an Outlook contact is left to pair (none when every one is linked: a sync with
    # no new contact builds no table of 100,000 emails here).
    pending = any(m.as_text(c.get("id")) not in used_outlook for c in unlinked)
    for contact in bc.contacts if pending else ():
        email = m.normalize_email(m.as_text(contact.get("email")))
        if email in bc_by_email:
            bc_more.setdefault(email, []).append(contact)
        elif email:
            bc_by_email[email] = contact

    def bc_with_email(email: str) -> list[Contact]:
        first = bc_by_email.get(email)
        return [] if first is None else [first, *bc_more.get(email, ())]
    taken = ({email for key, email in folder_after().items() if key in used_outlook}
             if pending else set())
    taken.discard("")

    def rank(contact: Contact) -> int:
        reason = bc_skip_reason(contact, flt)
        return 0 if reason is None else 1 if reason is not Reason.PRIVACY_BLOCKED else 2

    for contact in unlinked:
        graph_id = m.as_text(contact.get("id"))
        if graph_id in used_outlook:
            continue
        used_outlook.add(graph_id)
        email = m.normalize_email(m.graph_email(contact))
        candidates = [c for c in bc_with_email(email) if c["id"] not in used_bc]
        if email and (email in taken or (email in bc_by_email and not candidates)):
            # another contact of the folder, or another BC contact, already has this email
            add([Skip(Reason.DUPLICATE_EMAIL, graph_id=graph_id, detail=email)])
            continue
        taken.add(email)
        if candidates:
            match = min(candidates, key=rank)  # first of the best rank: min is stable
            used_bc.add(m.as_text(match.get("id")))
            add(pair(match, contact, None))
        else:
            add(pair(None, contact, None))  # untagged and unmatched: new in Outlook

    # 4. BC contacts left unpaired. Tables of 100,000 entries in a full sync that are done
    # with go first: the peak is here, with every table of this function alive.
    for done in (bc_by_email, bc_more, taken, unlinked, carriers):
        done.clear()
    used_outlook.clear()  # not read from here on
    unpaired = [c for c in bc.contacts if canon_bc_id(m.as_text(c.get("id"))) not in used_bc]
    used_bc.clear()
    # The folder's emails, only if a BC contact is left.
    folder_emails = set(folder_after().values()) if unpaired else set()
    folder_changes.clear()
    for contact in unpaired:
        bc_id = m.as_text(contact.get("id"))
        email = m.normalize_email(m.as_text(contact.get("email")))
        if email in folder_emails and bc_skip_reason(contact, flt) is None:
            add([Skip(Reason.EMAIL_IN_USE, bc_id=bc_id, detail=email)])
            continue
        actions = pair(contact, None if outlook.complete else UNREAD, None)
        if any(isinstance(a, CreateInOutlook) for a in actions):
            folder_emails.add(email)  # a second BC contact with this email must not create
        add(actions)

    for table in (folder_emails, used_bc, used_outlook):
        table.clear()
    return _finish(setup, mode, groups, removals, sum(vanishing), links, outlook_side, force)


def _finish(
    setup: UserSetup,
    mode: SyncMode,
    groups: list[tuple[Action, ...]],
    removals: list[bool],
    vanished: int,
    links: list[Link],
    outlook_side: _Sides,
    force: bool,
) -> Plan:
    """Apply the mass-delete rail, then count."""
    listed = outlook_side.by_id
    if outlook_side.complete:
        # A complete listing is the folder: links to contacts no longer in it (a store that
        # outlived the mailbox's contents) are not contacts in it.
        folder = len(listed)
    else:
        # Its contacts as far as known: those read, plus those only links or deletions know
        # of (a small set: not a copy of 100,000 ids).
        others = {link.graph_id for link in links if link.graph_id not in listed}
        others.update(gone for gone in outlook_side.gone if gone not in listed)
        folder = len(listed) + len(others)
        del others
    # A vanished contact is told apart only when the listing was complete (see MassDeleteStop).
    stop = mass_delete_stop(sum(removals), folder, vanished if outlook_side.complete else 0,
                            share=setup.max_delete_share, floor=setup.max_delete_floor)
    withheld = 0
    if stop is not None and force:
        stop = None
    elif stop is not None:
        withheld = stop.removing
        groups = [g for g, removal in zip(groups, removals, strict=True) if not removal]
    # summarize() asks only about the pairs being saved: index just those (not 100,000)
    saved = {a.link.bc_id for g in groups for a in g if isinstance(a, SaveLink)}
    existing = {(link.bc_id, link.graph_id) for link in links if link.bc_id in saved}
    summary = summarize(groups, existing)
    summary.withheld = withheld
    return Plan(
        user_id=setup.user_id,
        mode=mode,
        groups=groups,
        summary=summary,
        stop=stop,
        reads=ReadRequest.of(a for g in groups for a in g if isinstance(a, READ_ACTIONS)),
    )
