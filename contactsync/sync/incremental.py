"""Sync's reads: BC contacts modified since the last-sync mark (without the user's filter, so a
contact that left it is seen and removed) and the Graph delta of the folder since the stored
delta link (a 410 starts the delta over)."""

from __future__ import annotations

from datetime import timedelta

from contactsync.clients.errors import SyncStateExpired
from contactsync.clients.graph import GraphClient
from contactsync.engine.compact import Compactor
from contactsync.engine.mapping import GRAPH_SELECT
from contactsync.engine.planner import OutlookSnapshot
from contactsync.sync.full import compacted

# Graph's lastModifiedDateTime has whole seconds: a contact changed in the same second as the
# last run's start must still count as changed since it (re-planning is harmless).
SINCE_SLACK = timedelta(seconds=2)


async def read_outlook(
    graph: GraphClient, mailbox: str, folder_id: str | None, delta_link: str | None, full: bool
) -> tuple[OutlookSnapshot, str | None]:
    if folder_id is None:  # dry run, folder not created yet: it would be empty
        return OutlookSnapshot.full([]), None
    if full:
        pages = graph.iter_contact_pages(mailbox, folder_id, select=GRAPH_SELECT)
        return OutlookSnapshot.full(await compacted(pages, Compactor().graph)), delta_link
    try:
        result = await graph.delta(mailbox, folder_id, delta_link)
        initial = delta_link is None
    except SyncStateExpired:
        result = await graph.delta(mailbox, folder_id, None)
        initial = True
    snapshot = OutlookSnapshot(
        tuple(result.changed), complete=initial, removed_ids=frozenset(result.removed)
    )
    return snapshot, result.delta_link
