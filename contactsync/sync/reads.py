"""Reads the planner asks for by name (engine/actions.py): here, a search of the folder before a
create. The runner and the near-real-time reader both answer `FindInOutlook` with it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from contactsync.clients.errors import CREDENTIAL_FAILURES, ServiceError
from contactsync.clients.graph import GraphClient
from contactsync.engine import mapping as m
from contactsync.engine.links import canon_bc_id
from contactsync.engine.planner import OutlookSnapshot


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
    return OutlookSnapshot((*outlook_snap.contacts, *found), outlook_snap.complete,
                           outlook_snap.removed_ids, frozenset(searched))


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
