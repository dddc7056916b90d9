"""What the planner decides: small frozen records the executor carries out, in order.

A plan is a list of groups, one per contact pair. The executor runs a group's actions in order
and finishes it with the group's `SaveLink`/`DropLink`. In a `SaveLink`, an empty `bc_id` or
`graph_id` is the id that this group's create returned, and an empty `bc_etag` /
`graph_change_key` is the version this group's write returned (the executor fills them in).

Creates are never blind (DESIGN.md 10): before `CreateInOutlook` the executor looks the folder
up by our BC-id property and then by email; before `CreateInBc` it looks BC up by email. If
something is found, it creates nothing and plans that pair again with what it found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from contactsync.engine.links import Link
from contactsync.engine.mapping import FieldIssue


class Reason(StrEnum):
    """Why a contact is skipped, removed from the folder, or audited."""

    # BC contacts outside the sync (DESIGN.md 6)
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


@dataclass(frozen=True, slots=True)
class DropLink:
    bc_id: str
    graph_id: str
    reason: Reason


@dataclass(frozen=True, slots=True)
class Audit:
    """The Outlook version that lost to BC (DESIGN.md 6): kept in the audit log."""

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
    the caller reads it and plans again."""

    bc_id: str = ""
    graph_id: str = ""


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
)
WRITE_ACTIONS = (CreateInOutlook, UpdateOutlook, DeleteFromOutlook, CreateInBc, UpdateBc)


def is_write(action: Action) -> bool:
    """A write to Graph or BC (link and audit records are ours, not the services')."""
    return isinstance(action, WRITE_ACTIONS)
