"""The per-pair rules behind `planner.plan_contact` (the case table is in planner.py).

A side is a contact (a wire dict or a compact record of one), `None` (known not to exist:
deleted, or absent from a complete listing) or `UNREAD` (not read this time: unknown, never
taken as deleted). The rules read contacts and nothing else: what a full sync keeps of an
unchanged contact is the planner's and the snapshot's business (engine/compact.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any, Final

from contactsync.engine import mapping as m
from contactsync.engine.actions import (
    Action,
    Audit,
    CreateInBc,
    CreateInOutlook,
    DeleteFromOutlook,
    DropLink,
    NeedsRead,
    Reason,
    SaveLink,
    SaveLinkSeen,
    Skip,
    UpdateBc,
    UpdateOutlook,
)
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.echoes import bc_echo, outlook_echo, parse_time
from contactsync.engine.links import Link, LinkOrigin, SyncMode, canon_bc_id
from contactsync.schemas.setup import OutlookDeletePolicy, UserSetup


class Unread(Enum):
    UNREAD = "unread"


UNREAD: Final = Unread.UNREAD
Side = Mapping[str, Any] | None | Unread


def bc_skip_reason(bc: Mapping[str, Any], contact_filter: ContactFilter) -> Reason | None:
    """Why this BC contact is outside the user's sync, or None if it syncs."""
    if (bc.get("type") or "Person") != "Person":
        return Reason.NOT_PERSON
    if bc.get("privacyBlocked") is True:
        return Reason.PRIVACY_BLOCKED
    if not m.as_text(bc.get("displayName")).strip():
        return Reason.NO_NAME
    if not m.as_text(bc.get("email")).strip():
        return Reason.NO_EMAIL
    if not contact_filter.matches(bc):
        return Reason.FILTERED_OUT
    return None


def outlook_skip_reason(contact: m.Canonical) -> Reason | None:
    """Why this Outlook contact cannot become a BC contact, or None."""
    if not contact["display_name"].strip():
        return Reason.OUTLOOK_NO_NAME
    if not contact["email"].strip():
        return Reason.OUTLOOK_NO_EMAIL
    for field, value in (("displayName", contact["display_name"]), ("email", contact["email"])):
        if m.bc_field_problem(field, value) is not None:
            return Reason.OUTLOOK_INVALID
    return None


def bc_changed(bc: Mapping[str, Any], link: Link) -> bool:
    """Versions first: the content hash is computed only when a version moved (in a steady
    state almost never, which keeps a 100,000-contact full sync cheap)."""
    if bc_echo(bc, link):
        return False
    return m.content_hash(m.canonical_from_bc(bc)) != link.synced_hash


def outlook_changed(outlook: Mapping[str, Any], link: Link) -> bool:
    if outlook_echo(m.graph_change_key(outlook), link.graph_change_key):
        return False
    return m.content_hash(m.canonical_from_graph(outlook)) != link.synced_hash


def unchanged_pair(bc: Side, outlook: Side, link: Link, contact_filter: ContactFilter) -> bool:
    """True for a linked pair that `_plan_linked` would leave alone ([]): the BC contact still
    syncs, both sides still carry the link's versions, and the Outlook contact carries no other
    BC contact's tag. Versions only (a moved version is left to the rules, which compare the
    content once): this is asked of every pair of a full sync."""
    if not isinstance(outlook, Mapping) or not isinstance(bc, Mapping):
        return False
    if not outlook_echo(m.graph_change_key(outlook), link.graph_change_key):
        return False
    if m.bc_id_of(outlook) not in ("", canon_bc_id(link.bc_id)):
        return False
    return bc_echo(bc, link) and bc_skip_reason(bc, contact_filter) is None


class _Context:
    """The per-call context: setup, mode, compiled filter, watermark."""

    def __init__(
        self, setup: UserSetup, mode: SyncMode, flt: ContactFilter, since: datetime | None
    ) -> None:
        self.setup, self.mode, self.filter, self.since = setup, mode, flt, since

    def is_recent(self, modified: Any) -> bool:
        """Sync mode picks up unlinked contacts changed after the last sync (as BC's Contact Sync
        does)."""
        if self.mode is SyncMode.FULL or self.since is None:
            return True
        when = parse_time(modified)
        return when is None or when > self.since

    def link(self, bc_id: str, graph_id: str, *, bc: Mapping[str, Any] | None = None,
             outlook: Mapping[str, Any] | None = None, **kw: Any) -> SaveLink:
        """`bc`, `outlook`: the sides as planned from, kept with the link (engine/synced.py)."""
        link = Link(user_id=self.setup.user_id, bc_id=bc_id, graph_id=graph_id, **kw)
        return SaveLink(link) if bc is None and outlook is None else SaveLinkSeen(link, bc, outlook)


def _if_match(outlook: Mapping[str, Any]) -> str | None:
    return m.as_text(outlook.get("@odata.etag")) or None


def _audit(
    bc_id: str, graph_id: str, reason: Reason, outlook: m.Canonical, bc: m.Canonical | None
) -> list[Action]:
    """The Outlook values that lose to BC (all of them when the BC contact is gone)."""
    if bc is None:
        lost = {f: v for f, v in m.values_of(outlook, m.HASHED_FIELDS).items() if v}
        return [Audit(bc_id, graph_id, reason, lost, {})] if lost else []
    fields = m.differing_fields(outlook, bc)
    if not fields:
        return []
    return [Audit(bc_id, graph_id, reason, m.values_of(outlook, fields), m.values_of(bc, fields))]


def _bc_versions(bc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "bc_etag": m.as_text(bc.get("@odata.etag")),
        "bc_modified": parse_time(bc.get("lastModifiedDateTime")),
    }


def _create_in_outlook(ctx: _Context, bc: Mapping[str, Any]) -> list[Action]:
    bc_id = m.as_text(bc.get("id"))
    contact = m.canonical_from_bc(bc)
    return [
        CreateInOutlook(bc_id, m.GraphBodyFromBc(bc, bc_id), contact["email"]),
        ctx.link(
            bc_id,
            "",
            synced_hash=m.content_hash(contact),
            origin=LinkOrigin.BC,
            **_bc_versions(bc),
        ),
    ]


def _create_in_bc(ctx: _Context, outlook: Mapping[str, Any]) -> list[Action]:
    graph_id = m.as_text(outlook.get("id"))
    contact = m.canonical_from_graph(outlook)
    reason = outlook_skip_reason(contact)
    if reason is not None:
        return [Skip(reason, graph_id=graph_id)]
    if not ctx.setup.create_in_bc:
        return [Skip(Reason.CREATE_IN_BC_OFF, graph_id=graph_id)]
    if not ctx.is_recent(outlook.get("lastModifiedDateTime")):
        return []
    fields, issues = m.bc_fields_from_canonical(contact)
    create = CreateInBc(graph_id, fields, tuple(issues))
    if not ctx.filter.matches(fields):
        # BC gets the contact, but outside this user's filter it does not sync: no link, so
        # the Outlook contact stays as it is (and matches it by email as "not synced" later).
        return [create]
    return [
        create,
        ctx.link(
            "",
            graph_id,
            graph_change_key=m.graph_change_key(outlook),
            synced_hash=m.content_hash(m.canonical_from_bc(fields)),
            origin=LinkOrigin.OUTLOOK,
            outlook=outlook,
        ),
    ]


def _push(
    ctx: _Context,
    bc: Mapping[str, Any],
    outlook: Mapping[str, Any],
    reason: Reason,
    audit: bool,
    origin: LinkOrigin,
) -> list[Action]:
    """BC wins: overwrite Outlook where it differs, audit what Outlook loses, save the link."""
    bc_id, graph_id = m.as_text(bc.get("id")), m.as_text(outlook.get("id"))
    bc_contact, outlook_contact = m.canonical_from_bc(bc), m.canonical_from_graph(outlook)
    actions: list[Action] = (
        _audit(bc_id, graph_id, reason, outlook_contact, bc_contact) if audit else []
    )
    retag = m.bc_id_of(outlook) != canon_bc_id(bc_id)
    write = bool(m.differing_fields(bc_contact, outlook_contact)) or retag
    if write:
        fields = m.graph_fields_from_canonical(bc_contact, bc_id, outlook)
        actions.append(UpdateOutlook(graph_id, bc_id, fields, _if_match(outlook)))
    actions.append(
        ctx.link(
            bc_id,
            graph_id,
            graph_change_key="" if write else m.graph_change_key(outlook),
            synced_hash=m.content_hash(bc_contact),
            origin=origin,
            bc=bc,
            outlook=outlook,
            **_bc_versions(bc),
        )
    )
    return actions


def _pull(
    ctx: _Context, bc: Mapping[str, Any], outlook: Mapping[str, Any], link: Link
) -> list[Action]:
    """Only Outlook changed: write the fields that differ into BC, field by field."""
    bc_id, graph_id = link.bc_id, link.graph_id
    changes, issues = m.bc_fields_from_canonical(m.canonical_from_graph(outlook), current=bc)
    actions: list[Action] = []
    versions = _bc_versions(bc)
    if changes:
        actions.append(
            UpdateBc(bc_id, graph_id, changes, m.as_text(bc.get("@odata.etag")), tuple(issues))
        )
        versions = {"bc_etag": "", "bc_modified": None}
    elif issues:
        detail = "; ".join(f"{i.field}: {i.reason}" for i in issues)
        actions.append(Skip(Reason.OUTLOOK_INVALID, bc_id, graph_id, detail))
    after = {**bc, **changes}
    reason = bc_skip_reason(after, ctx.filter)
    if reason is not None:  # the edit takes it out of the user's sync: BC has it, Outlook not
        actions.append(DeleteFromOutlook(graph_id, reason, bc_id, _if_match(outlook)))
        actions.append(DropLink(bc_id, graph_id, reason))
        return actions
    expected = m.canonical_from_bc(after)
    actions.append(
        ctx.link(
            bc_id,
            graph_id,
            graph_change_key=m.graph_change_key(outlook),
            synced_hash=m.content_hash(expected),
            origin=link.origin,
            bc=bc,
            outlook=outlook,
            **versions,
        )
    )
    return actions


def _plan_unlinked(ctx: _Context, bc: Side, outlook: Side) -> list[Action]:
    if isinstance(bc, Mapping):
        bc_id = m.as_text(bc.get("id"))
        reason = bc_skip_reason(bc, ctx.filter)
        if isinstance(outlook, Mapping):
            graph_id = m.as_text(outlook.get("id"))
            ours = m.bc_id_of(outlook) == canon_bc_id(bc_id)
            if reason is not None and ours:
                return [DeleteFromOutlook(graph_id, reason, bc_id, _if_match(outlook))]
            if reason is not None:
                why = Reason.PRIVACY_BLOCKED if reason is Reason.PRIVACY_BLOCKED else None
                return [Skip(why or Reason.BC_MATCH_NOT_SYNCED, bc_id, graph_id, str(reason))]
            origin = LinkOrigin.BC if ours else LinkOrigin.MATCHED
            return _push(ctx, bc, outlook, Reason.DUPLICATE_FOUND, True, origin)
        if reason is not None:
            return [Skip(reason, bc_id=bc_id)]
        if not ctx.is_recent(bc.get("lastModifiedDateTime")):
            return []
        return _create_in_outlook(ctx, bc)
    if isinstance(outlook, Mapping):
        graph_id, tag = m.as_text(outlook.get("id")), m.bc_id_of(outlook)
        if tag and bc is None:
            return [DeleteFromOutlook(graph_id, Reason.BC_DELETED, tag, _if_match(outlook))]
        if tag:  # the plan may link it and write Outlook only: BC as it is now
            return [NeedsRead(bc_id=tag, current=True)]
        return _create_in_bc(ctx, outlook)
    return []


def _remove(
    ctx: _Context, link: Link, reason: Reason, bc: Mapping[str, Any] | None, outlook: Side
) -> list[Action]:
    """The BC contact left the sync (deleted, privacy-blocked, filtered...): take it out."""
    if outlook is None:
        return [DropLink(link.bc_id, link.graph_id, reason)]
    actions: list[Action] = []
    if_match = None
    if isinstance(outlook, Mapping):
        if_match = _if_match(outlook)
        if outlook_changed(outlook, link):
            contact = m.canonical_from_graph(outlook)
            bc_contact = m.canonical_from_bc(bc) if bc is not None else None
            actions += _audit(link.bc_id, link.graph_id, reason, contact, bc_contact)
    actions.append(DeleteFromOutlook(link.graph_id, reason, link.bc_id, if_match))
    actions.append(DropLink(link.bc_id, link.graph_id, reason))
    return actions


def _plan_linked(ctx: _Context, bc: Side, outlook: Side, link: Link) -> list[Action]:
    recreate = ctx.setup.outlook_delete_policy is OutlookDeletePolicy.RECREATE
    if bc is None:
        return _remove(ctx, link, Reason.BC_DELETED, None, outlook)
    if isinstance(bc, Unread):
        if outlook is None:
            if recreate:  # created again from BC, nothing written to BC: BC as it is now
                return [NeedsRead(bc_id=link.bc_id, current=True)]
            return [DropLink(link.bc_id, link.graph_id, Reason.DELETED_IN_OUTLOOK)]
        if isinstance(outlook, Mapping) and outlook_changed(outlook, link):
            return [NeedsRead(bc_id=link.bc_id)]
        return []
    reason = bc_skip_reason(bc, ctx.filter)
    if reason is not None:
        return _remove(ctx, link, reason, bc, outlook)
    if outlook is None:  # deleted in Outlook: BC is master
        dropped: list[Action] = [DropLink(link.bc_id, link.graph_id, Reason.DELETED_IN_OUTLOOK)]
        return dropped + _create_in_outlook(ctx, bc) if recreate else dropped
    bc_moved = bc_changed(bc, link)
    if isinstance(outlook, Unread):
        return [NeedsRead(graph_id=link.graph_id)] if bc_moved else []
    outlook_moved = outlook_changed(outlook, link)
    # A tag naming another BC contact contradicts the link: the link wins, the push retags.
    retag = m.bc_id_of(outlook) not in ("", canon_bc_id(link.bc_id))
    if bc_moved or retag:
        return _push(ctx, bc, outlook, Reason.CONFLICT, outlook_moved, link.origin)
    if outlook_moved:
        return _pull(ctx, bc, outlook, link)
    return []


def plan_contact(
    bc: Side,
    outlook: Side,
    link: Link | None,
    setup: UserSetup,
    mode: SyncMode,
    *,
    contact_filter: ContactFilter | None = None,
    since: datetime | None = None,
) -> list[Action]:
    """Actions for one pair (see the case table). `contact_filter` defaults to the setup's
    filter compiled (pass it compiled when planning many pairs); `since` is the last sync's
    watermark, used in Sync mode for contacts that are not linked yet."""
    flt = (
        contact_filter if contact_filter is not None else ContactFilter.parse(setup.contact_filter)
    )
    ctx = _Context(setup, mode, flt, since)
    if link is None:
        return _plan_unlinked(ctx, bc, outlook)
    return _plan_linked(ctx, bc, outlook, link)
