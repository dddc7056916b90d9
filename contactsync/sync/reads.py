"""The reads a plan asks for (engine/actions.ReadRequest), and nothing else: contacts by id
(NeedsRead), a search of the folder before an Outlook create (FindInOutlook) and of BC by
email before a BC create (FindInBc). The runner's plan loop calls a `Reader`, adds what it
answers to the snapshots and plans again; the near-real-time path's reader answers reads by id
from the versions it holds (sync/near_real_time.py) and searches like this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contactsync.clients.bc import BcClient, odata_literal
from contactsync.clients.errors import CREDENTIAL_FAILURES, NotFound, ServiceError
from contactsync.clients.graph import GraphClient
from contactsync.engine import mapping as m
from contactsync.engine.actions import ReadRequest
from contactsync.engine.links import canon_bc_id
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot

Snapshots = tuple[BcSnapshot, OutlookSnapshot]


class Reader:
    """Reads one user's ReadRequest from BC and the user's folder."""

    def __init__(self, bc: BcClient, graph: GraphClient, mailbox: str,
                 folder_id: str | None) -> None:
        self.bc, self.graph, self.mailbox, self.folder_id = bc, graph, mailbox, folder_id

    async def __call__(self, request: ReadRequest, bc_snap: BcSnapshot,
                       outlook_snap: OutlookSnapshot) -> Snapshots:
        bc_snap, outlook_snap = await self.by_id(request, bc_snap, outlook_snap)
        if request.outlook_searches:
            outlook_snap = await find_in_folder(self.graph, self.mailbox, self.folder_id,
                                                request.outlook_searches, outlook_snap)
        if request.bc_emails:
            bc_snap = await find_in_bc(self.bc, request.bc_emails, bc_snap)
        return bc_snap, outlook_snap

    async def by_id(self, request: ReadRequest, bc_snap: BcSnapshot,
                    outlook_snap: OutlookSnapshot) -> Snapshots:
        """Contacts by id. One read replaces what the snapshot held of it (a stub:
        engine/compact.py); one found gone leaves it."""
        if request.bc_ids:
            bc_found: dict[str, Mapping[str, Any]] = {}
            bc_gone = set(bc_snap.deleted_ids)
            for bc_id in request.bc_ids:
                try:
                    bc_found[bc_id] = await self.bc.get_contact(bc_id)
                except NotFound:
                    bc_gone.add(bc_id)
            bc_snap = dataclasses.replace(
                bc_snap, contacts=_replaced(bc_snap.contacts, bc_found, request.bc_ids),
                deleted_ids=frozenset(bc_gone))
        if request.graph_ids:
            out_found: dict[str, Mapping[str, Any]] = {}
            out_gone = set(outlook_snap.removed_ids)
            for graph_id in request.graph_ids:
                try:
                    out_found[graph_id] = await self.graph.get_contact(self.mailbox, graph_id)
                except NotFound:
                    out_gone.add(graph_id)
            outlook_snap = dataclasses.replace(
                outlook_snap,
                contacts=_replaced(outlook_snap.contacts, out_found, request.graph_ids),
                removed_ids=frozenset(out_gone))
        return bc_snap, outlook_snap


def _replaced(
    contacts: Sequence[Mapping[str, Any]], found: dict[str, Mapping[str, Any]],
    asked: frozenset[str],
) -> tuple[Mapping[str, Any], ...]:
    """`contacts` with those asked for replaced by what was found (or left out: gone)."""
    by_id = {str(c.get("id")): c for c in contacts}
    for contact_id in asked:
        by_id.pop(contact_id, None)
    by_id.update(found)
    return tuple(by_id.values())


async def find_in_bc(bc: BcClient, emails: Iterable[str], bc_snap: BcSnapshot) -> BcSnapshot:
    """`bc_snap` plus BC's contacts with these emails (FindInBc), each email marked searched."""
    known = {str(c.get("id")) for c in bc_snap.contacts}
    found: list[Mapping[str, Any]] = []
    searched = set(bc_snap.searched_emails)
    for email in emails:
        searched.add(m.normalize_email(email))
        # BC compares text case-sensitively in $filter; emails are matched case-insensitively.
        variants = sorted({email, email.lower(), email.upper()})
        query = " or ".join(f"email eq {odata_literal(v)}" for v in variants)
        for contact in await bc.list_contacts(query):
            if str(contact.get("id")) not in known:
                known.add(str(contact.get("id")))
                found.append(contact)
    return dataclasses.replace(bc_snap, contacts=(*bc_snap.contacts, *found),
                               searched_emails=frozenset(searched))


async def find_in_folder(
    graph: GraphClient, mailbox: str, folder_id: str | None,
    wanted: Iterable[tuple[str, str]], outlook_snap: OutlookSnapshot,
) -> OutlookSnapshot:
    """`outlook_snap` plus, for each (BC id, email), the folder's contact tagged with that BC id,
    else its first untagged contact with that email (one tagged for another BC contact is not
    this one's); every BC id asked is marked searched. A search the service fails is taken as
    "nothing found", as a blind create was before: the client's own create retry looks again."""
    have = {m.as_text(c.get("id")) for c in outlook_snap.contacts}
    found: list[Mapping[str, Any]] = []
    searched = set(outlook_snap.searched)
    for bc_id, email in wanted:
        searched.add(canon_bc_id(bc_id))
        hit = None if folder_id is None else await _search(graph, mailbox, folder_id, bc_id, email)
        if hit is not None and m.as_text(hit.get("id")) not in have:
            have.add(m.as_text(hit.get("id")))
            found.append(hit)
    return dataclasses.replace(outlook_snap, contacts=(*outlook_snap.contacts, *found),
                               searched=frozenset(searched))


async def _search(graph: GraphClient, mailbox: str, folder_id: str, bc_id: str,
                  email: str) -> Mapping[str, Any] | None:
    try:
        tagged = await graph.find_by_bc_id(mailbox, folder_id, bc_id)
        if tagged is not None or not email:
            return tagged
        hits = await graph.find_by_email(mailbox, folder_id, email)
    except CREDENTIAL_FAILURES:
        raise  # no token: nothing else will work either
    except ServiceError:
        return None
    return next((c for c in hits if not m.bc_id_of(c)), None)
