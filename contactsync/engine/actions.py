"""What the planner decides: small frozen records the executor carries out, in order, and the
`Plan` that holds them with its summary.

A plan is a list of groups, one per contact pair. The executor runs a group's actions in order
and finishes it with the group's `SaveLink`/`DropLink`; a failed write ends its group (the next
run plans that pair again). In a `SaveLink`, an empty `bc_id` or `graph_id` is the id that this
group's create returned, and an empty `bc_etag` / `graph_change_key` is the version this group's
write returned (the executor fills them in). A `SaveLink` replaces any link of the user with
the same BC id or the same Graph id. `Audit` and `Skip` are records for the log, not writes.

Creates are never blind (docs/architecture.md 10): a plan made from part of the folder (a delta,
a hint) answers `FindInOutlook` instead of `CreateInOutlook`, and the runner searches the folder
by our BC-id property and then by email and plans again with what it found; before `CreateInBc`
the runner looks BC up by email. What is found is paired by the planner's rules (linked, BC
wins, Outlook's losing values audited, written with If-Match); the executor only writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from contactsync.engine.links import Link, SyncMode
from contactsync.engine.mapping import FieldIssue
from contactsync.engine.rails import MassDeleteStop


class Reason(StrEnum):
    """Why a contact is skipped, removed from the folder, or audited."""

    # BC contacts outside the sync (docs/architecture.md 6)
    NOT_PERSON = "not_person"
    NO_NAME = "no_name"
    NO_EMAIL = "no_email"
    PRIVACY_BLOCKED = "privacy_blocked"
    FILTERED_OUT = "filtered_out"
    BC_DELETED = "bc_deleted"
    # Outlook contacts that cannot be created in BC
    OUTLOOK_NO_NAME = "outlook_no_name"
    OUTLOOK_NO_EMAIL = "outlook_no_email"
    OUTLOOK_INVALID = "outlook_invalid"  # BC would reject its name or email
    CREATE_IN_BC_OFF = "create_in_bc_off"
    # matching
    DUPLICATE_EMAIL = "duplicate_email"  # another Outlook contact with this email was matched
    EMAIL_IN_USE = "email_in_use"  # the folder holds another contact with this BC contact's email
    BC_MATCH_NOT_SYNCED = "bc_match_not_synced"  # same email as a BC contact outside the sync
    DUPLICATE_BC_ID = "duplicate_bc_id"  # a second Outlook contact tagged with one BC contact
    # link changes
    DELETED_IN_OUTLOOK = "deleted_in_outlook"
    CONFLICT = "conflict"  # both sides changed: BC won
    DUPLICATE_FOUND = "duplicate_found"  # both existed unlinked: BC won


@dataclass(frozen=True, slots=True)
class CreateInOutlook:
    bc_id: str
    fields: Mapping[str, Any]  # Graph body, tagged with the BC id property
    email: str  # for the executor's look-up before it creates


@dataclass(frozen=True, slots=True)
class UpdateOutlook:
    graph_id: str
    bc_id: str
    fields: Mapping[str, Any]  # every mapped field: a push overwrites
    if_match: str | None  # the Outlook version this was planned against


@dataclass(frozen=True, slots=True)
class DeleteFromOutlook:
    graph_id: str
    reason: Reason
    bc_id: str = ""
    if_match: str | None = None


@dataclass(frozen=True, slots=True)
class CreateInBc:
    graph_id: str
    fields: Mapping[str, Any]  # BC API body, type Person
    issues: tuple[FieldIssue, ...] = ()  # fields left out (BC would reject them)


@dataclass(frozen=True, slots=True)
class UpdateBc:
    bc_id: str
    graph_id: str
    changes: Mapping[str, Any]  # only the fields that differ
    etag: str  # If-Match
    issues: tuple[FieldIssue, ...] = ()


@dataclass(frozen=True, slots=True)
class SaveLink:
    link: Link  # see the module docstring for the empty fields

    @property
    def sides(self) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
        """(BC, Outlook): each side's contact at the link's version as the plan saw it (None:
        unknown, or the answer of this group's write). Kept in the link row
        (engine/synced.py)."""
        return None, None


@dataclass(frozen=True, slots=True)
class SaveLinkSeen(SaveLink):
    """A SaveLink with the sides the plan saw. A subclass, so the SaveLink of each of a full
    sync's 100,000 creates stays one slot (its BC side is its create's source)."""

    # Not part of what the action is (equality, repr): the link is.
    bc: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    outlook: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def sides(self) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
        return self.bc, self.outlook


@dataclass(frozen=True, slots=True)
class DropLink:
    bc_id: str
    graph_id: str
    reason: Reason


@dataclass(frozen=True, slots=True)
class Audit:
    """The Outlook version that lost to BC (docs/architecture.md 6): kept in the audit log."""

    bc_id: str
    graph_id: str
    reason: Reason
    outlook_values: Mapping[str, str]  # canonical fields that lost, Outlook's values
    bc_values: Mapping[str, str]  # the same fields, BC's winning values


@dataclass(frozen=True, slots=True)
class Skip:
    reason: Reason
    bc_id: str = ""
    graph_id: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NeedsRead:
    """The pair cannot be decided without reading this contact (the one id that is set);
    the caller reads it and plans again.

    `current`: read it from the service as it is now. A version known from an earlier read or
    write, or kept in the link row (sync/near_real_time.py), stands in for a read only where
    the plan then writes that very contact with If-Match, which refuses a contact changed or
    gone since; a plan that only writes the other side (a create) would rest on it unchecked."""

    bc_id: str = ""
    graph_id: str = ""
    current: bool = False


@dataclass(frozen=True, slots=True)
class FindInOutlook:
    """Before creating this BC contact in a folder the plan saw only part of (a delta, a hint):
    find the folder's contact that carries its BC-id tag, or an untagged one with its email.
    The caller adds what it finds to the Outlook snapshot (and the BC id to its `searched`)
    and plans again: a found contact is then paired like any other (linked, BC wins, Outlook's
    values audited, written with If-Match), so a create is never blind."""

    bc_id: str
    email: str


@dataclass(frozen=True, slots=True)
class FindInBc:
    """Before creating a BC contact from this Outlook contact: look BC up by its email (a
    listing may not hold the match: an incremental read, or one narrowed by the user's
    filter). The caller adds what it finds to the BC snapshot (and the email to its
    `searched_emails`) and plans again: a match is linked, or skipped outside the filter."""

    graph_id: str
    email: str


@dataclass(frozen=True)
class ReadRequest:
    """What the planner needs read before it can decide the rest: the runner reads exactly
    this, adds it to the snapshots and plans again (docs/architecture.md 3)."""

    bc_ids: frozenset[str] = frozenset()  # NeedsRead: these BC contacts, by id
    graph_ids: frozenset[str] = frozenset()  # NeedsRead: these Outlook contacts, by id
    outlook_searches: frozenset[tuple[str, str]] = frozenset()  # FindInOutlook (BC id, email)
    bc_emails: frozenset[str] = frozenset()  # FindInBc: BC contacts with these emails
    current_bc_ids: frozenset[str] = frozenset()  # of bc_ids: as BC holds them now (a GET)

    def __bool__(self) -> bool:
        return bool(self.bc_ids or self.graph_ids or self.outlook_searches or self.bc_emails)

    @classmethod
    def of(cls, actions: Iterable[Action]) -> ReadRequest:
        bc_ids: set[str] = set()
        graph_ids: set[str] = set()
        searches: set[tuple[str, str]] = set()
        emails: set[str] = set()
        current: set[str] = set()
        for a in actions:
            if isinstance(a, NeedsRead):
                (bc_ids.add(a.bc_id) if a.bc_id else graph_ids.add(a.graph_id))
                if a.current and a.bc_id:
                    current.add(a.bc_id)
            elif isinstance(a, FindInOutlook):
                searches.add((a.bc_id, a.email))
            elif isinstance(a, FindInBc):
                emails.add(a.email)
        return cls(frozenset(bc_ids), frozenset(graph_ids), frozenset(searches),
                   frozenset(emails), frozenset(current))


Action = (
    CreateInOutlook
    | UpdateOutlook
    | DeleteFromOutlook
    | CreateInBc
    | UpdateBc
    | SaveLink
    | DropLink
    | Audit
    | Skip
    | NeedsRead
    | FindInOutlook
    | FindInBc
)
READ_ACTIONS = (NeedsRead, FindInOutlook, FindInBc)
WRITE_ACTIONS = (CreateInOutlook, UpdateOutlook, DeleteFromOutlook, CreateInBc, UpdateBc)


def is_write(action: Action) -> bool:
    """A write to Graph or BC (link and audit records are ours, not the services')."""
    return isinstance(action, WRITE_ACTIONS)


@dataclass
class PlanSummary:
    created_in_outlook: int = 0
    created_in_bc: int = 0
    updated_outlook: int = 0
    updated_bc: int = 0
    deleted_from_outlook: int = 0
    linked: int = 0  # pairs linked that existed on both sides
    unlinked: int = 0  # links dropped without a replacement
    conflicts: int = 0  # Outlook versions that lost to BC (audited)
    needs_read: int = 0
    withheld: int = 0  # groups held back by the mass-delete rail
    skipped: dict[str, int] = field(default_factory=dict)  # by reason

    @property
    def created(self) -> int:
        return self.created_in_outlook + self.created_in_bc

    @property
    def updated(self) -> int:
        return self.updated_outlook + self.updated_bc


@dataclass
class Plan:
    """Groups of actions, one group per contact pair, each run in order (see actions.py)."""

    user_id: str
    mode: SyncMode
    groups: list[tuple[Action, ...]]
    summary: PlanSummary
    stop: MassDeleteStop | None = None  # the rail held the removals back
    reads: ReadRequest = ReadRequest()  # read this, then plan again

    @property
    def stopped_reason(self) -> str | None:
        """The stop as the user reads it."""
        return None if self.stop is None else str(self.stop)

    @property
    def actions(self) -> list[Action]:
        return [action for group in self.groups for action in group]

    @property
    def writes(self) -> list[Action]:
        return [action for action in self.actions if is_write(action)]


def summarize(groups: list[tuple[Action, ...]], existing: set[tuple[str, str]]) -> PlanSummary:
    summary = PlanSummary()
    skipped: Counter[str] = Counter()
    for group in groups:
        saves = False
        drops = 0
        for action in group:
            if isinstance(action, CreateInOutlook):
                summary.created_in_outlook += 1
            elif isinstance(action, CreateInBc):
                summary.created_in_bc += 1
            elif isinstance(action, UpdateOutlook):
                summary.updated_outlook += 1
            elif isinstance(action, UpdateBc):
                summary.updated_bc += 1
            elif isinstance(action, DeleteFromOutlook):
                summary.deleted_from_outlook += 1
            elif isinstance(action, Audit):
                summary.conflicts += 1
            elif isinstance(action, Skip):
                skipped[action.reason.value] += 1
            elif isinstance(action, READ_ACTIONS):
                summary.needs_read += 1
            elif isinstance(action, DropLink):
                drops += 1
            elif isinstance(action, SaveLink):
                saves = True
                key = (action.link.bc_id, action.link.graph_id)
                if all(key) and key not in existing:
                    summary.linked += 1
        if drops and not saves:
            summary.unlinked += drops
    summary.skipped = dict(skipped)
    return summary
