"""The jobs' entry points: one user's "Sync" or "Full sync" (`sync_user`) and a near-real-time
change (`apply_changes`). Each reads (full.py, incremental.py, or the change itself), runs the
plan loop (plan_loop.py: plan, read what it asks, plan again, execute) and returns the run's
report (report.py), within the user's session (session.py).

- Full sync (and a user's first Sync): list the BC contacts the user's filter can select (the
  filter goes to BC as OData where the translation is exact) and the whole Outlook folder; a
  linked contact absent from either complete listing is gone (or left the filter).
- Sync: BC contacts modified since the last-sync mark (without the user's filter, so a contact
  that left it is seen and removed) and the Graph delta of the folder since the stored delta
  link (a 410 starts the delta over).

The last-sync mark is the start of the run, so changes made during a run are read again next
time, never missed. When any pair failed, neither the mark nor the delta link advance: the next
run reads those changes again (echo suppression makes a re-read cost no write).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import NotFound
from contactsync.clients.graph import GraphClient
from contactsync.engine.links import Link, SyncMode, canon_bc_id
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.sync import near_real_time as nrt
from contactsync.sync.bulk_gc import snapshots_kept_out_of_gc
from contactsync.sync.full import FULL_LISTING_PAGE, read_full
from contactsync.sync.incremental import SINCE_SLACK, read_outlook
from contactsync.sync.memory import release_free_memory
from contactsync.sync.plan_loop import RunInputs, plan_and_apply, replan_conflicts
from contactsync.sync.report import SyncReport
from contactsync.sync.session import Sessions, UserSession

__all__ = ["FULL_LISTING_PAGE", "Sessions", "SyncReport", "apply_changes", "sync_user"]


def _session(setup: UserSetup, graph: GraphClient, bc: BcClient, store: Store,
             sessions: Sessions | None) -> UserSession:
    if sessions is None:
        return UserSession.fresh(setup, graph=graph, bc=bc, store=store)
    return sessions.open(setup, graph=graph, bc=bc, store=store)


async def sync_user(
    setup: UserSetup,
    mode: SyncMode,
    *,
    graph: GraphClient,
    bc: BcClient,
    store: Store,
    dry_run: bool = False,
    force: bool = False,
    sessions: Sessions | None = None,
) -> SyncReport:
    """BC's "Sync" (changes since the last sync, both ways) or "Full sync" (everything)."""
    session = _session(setup, graph, bc, store, sessions)
    session.refuse_stopped()
    started_clock = time.perf_counter()
    started_at = datetime.now(UTC)
    state = store.state.get(setup.user_id)
    full = mode is SyncMode.FULL or state.last_sync_at is None
    folder_id = await session.folder(dry_run)
    links: list[Link] | None = None
    with snapshots_kept_out_of_gc():
        if full:
            bc_snap, outlook_snap, links = await read_full(graph, bc, store, setup, folder_id)
            new_delta_link = state.delta_link
        else:
            assert state.last_sync_at is not None
            bc_snap = BcSnapshot.changes(await bc.list_changed_since(state.last_sync_at))
            outlook_snap, new_delta_link = await read_outlook(
                graph, setup.mailbox, folder_id, state.delta_link, full
            )
        since = None if full or state.last_sync_at is None else state.last_sync_at - SINCE_SLACK
        inputs = RunInputs(setup, mode, bc_snap, outlook_snap, folder_id, since, force)
        # What this run reads and writes is the version the links will hold: the next change
        # to these contacts needs no read (near_real_time.Known in the session; the most
        # recent few thousand).
        known = session.known
        known.saw_bc(bc_snap.contacts[-nrt.KNOWN_MAX:])
        known.saw_outlook(outlook_snap.contacts[-nrt.KNOWN_MAX:])
        report = await plan_and_apply(inputs, session, dry_run=dry_run, links=links,
                                      on_written=None if dry_run else known.written)
        # For pairs another worker (a second applier, a person) wrote between our read and our
        # write (412): re-read just those and plan them as changes, not as a listing.
        conflicts_only = dataclasses.replace(inputs, mode=SyncMode.SYNC, since=None,
                                             bc=None, outlook=None)
    del links, bc_snap, outlook_snap, inputs
    if not dry_run:
        await replan_conflicts(report, conflicts_only, session)
    if full:
        release_free_memory()  # a long-lived process keeps none of the listings (memory.py)
    if report.execution is not None and not report.execution.failures:
        # Only a clean run moves the marks: a failed pair is read and planned again next time.
        store.state.update(setup.user_id, delta_link=new_delta_link)
        store.state.mark_synced(setup.user_id, started_at, full=full)
    report.duration_s = time.perf_counter() - started_clock
    return report


async def apply_changes(
    setup: UserSetup,
    *,
    graph: GraphClient,
    bc: BcClient,
    store: Store,
    bc_changes: BcSnapshot | None = None,
    read_outlook_delta: bool = False,
    sessions: Sessions | None = None,
) -> SyncReport:
    """The near-real-time path: apply known BC changes (snapshots from the change feed) and/or
    the Outlook folder's delta since the stored link (a notification hint), without listing
    either side. Every item given is a change, so no "since" applies. The stored delta link
    advances only after a clean run; the last-sync mark of "Sync" is left alone.
    Reads and echoes are kept down as sync/near_real_time.py describes: the change's own links,
    stale snapshots not a change, known versions written with If-Match, a 412 re-read and
    re-planned. `sessions`: the caller's, kept between its runs (folder id, known versions).
    """
    session = _session(setup, graph, bc, store, sessions)
    session.refuse_stopped()
    started_clock = time.perf_counter()
    folder_id = await session.folder(dry_run=False, cached=True)
    known = session.known
    outlook_snap: OutlookSnapshot | None = None
    new_delta_link: str | None = None
    if read_outlook_delta:
        state = store.state.get(setup.user_id)
        outlook_snap, new_delta_link = await read_outlook(
            graph, setup.mailbox, folder_id, state.delta_link, full=False
        )
        known.saw_outlook(outlook_snap.contacts)
    if bc_changes is not None:
        known.saw_bc(bc_changes.contacts)
    links = nrt.links_for(store, setup, bc_changes, outlook_snap)
    bc_changes = await _confirm_unlinked(bc_changes, links, bc, known)
    inputs = RunInputs(setup, SyncMode.SYNC, bc_changes, outlook_snap, folder_id)
    written_in_bc: list[dict[str, Any]] = []

    def written(side: str, contact: Mapping[str, Any], bc_id: str) -> None:
        known.written(side, contact, bc_id)
        if side == "bc":
            written_in_bc.append(dict(contact))

    report = await plan_and_apply(inputs, session, dry_run=False, links=links,
                                  reader=nrt.KnownReader(known, links, folder_id,
                                                         nrt.SyncedSides(store, setup)),
                                  on_written=written,
                                  every_link=nrt.every_link(store, setup))
    await replan_conflicts(report, inputs, session, on_written=written)
    report.bc_written = written_in_bc
    if (read_outlook_delta and report.execution is not None
            and not report.execution.failures):
        store.state.set_delta_link(setup.user_id, new_delta_link)
    report.duration_s = time.perf_counter() - started_clock
    return report


async def _confirm_unlinked(bc_snap: BcSnapshot | None, links: Sequence[Link], bc: BcClient,
                            known: nrt.Known) -> BcSnapshot | None:
    """Snapshots of contacts this user has no link to, read again from BC before planning.

    Such a snapshot can only create a contact in the folder, and the router sends a later
    deletion (or a change that takes the contact out of the user's filter) only to users
    linked to the contact. When the applier lags (a restart, a rebalance), that later change
    reached nobody, and the older snapshot would create a contact BC no longer has, or one
    that left the filter, for good (found by tests/reliability/test_crash.py). So creates rest
    on BC's current state (decision 1): one GET per contact new to the user; a 404 counts as
    deleted."""
    if bc_snap is None:
        return None
    linked = {link.bc_id for link in links}
    fresh: list[dict[str, Any]] = []
    gone = set(bc_snap.deleted_ids)
    reread = False
    for contact in bc_snap.contacts:
        bc_id = str(contact.get("id", ""))
        if canon_bc_id(bc_id) in linked:  # links hold canonical ids
            fresh.append(dict(contact))
            continue
        reread = True
        try:
            fresh.append(await bc.get_contact(bc_id))
        except NotFound:
            gone.add(bc_id)
    if not reread:
        return bc_snap
    known.saw_bc(fresh)
    return BcSnapshot(tuple(fresh), bc_snap.complete, frozenset(gone))
