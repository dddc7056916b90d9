"""One user's "Sync" or "Full sync": read both sides, plan (pure), write, record.

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

import asyncio
import dataclasses
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import NotFound, SyncStateExpired
from contactsync.clients.graph import GraphClient
from contactsync.engine import mapping as m
from contactsync.engine.actions import Action
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.compact import Compactor, graph_stub
from contactsync.engine.echoes import bc_echo
from contactsync.engine.links import Link, SyncMode, canon_bc_id
from contactsync.engine.mapping import BC_SELECT, GRAPH_SELECT
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot, Plan, PlanSummary, plan_user
from contactsync.engine.rails import MassDeleteStop
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.store.records import AuditKind, AuditRecord, SetupStoppedError
from contactsync.sync import near_real_time as nrt
from contactsync.sync.bulk_gc import keep_out_of_gc, snapshots_kept_out_of_gc
from contactsync.sync.executor import ExecutionReport, Executor, WriteHook
from contactsync.sync.memory import release_free_memory
from contactsync.sync.plan_names import plan_lines, skipped_contacts
from contactsync.sync.reads import Reader

SINCE_SLACK = timedelta(seconds=2)
_TURN_EVERY = 200  # contacts converted between two turns of the event loop (~2 ms)
# Plan, read what it asks, plan again: by id, then the searches before creates. A request still
# open after that waits for the next run (its pair writes nothing now).
READ_ROUNDS = 3
FULL_LISTING_PAGE = 5_000  # BC contacts per page of a full listing (see _read_full)


@dataclass
class SyncReport:
    user_id: str
    mode: SyncMode
    dry_run: bool
    summary: PlanSummary
    stop: MassDeleteStop | None = None  # the safety rail held the plan's removals back
    execution: ExecutionReport | None = None
    duration_s: float = 0.0
    planned_writes: list[Action] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)  # a dry run's writes, by contact name
    skipped_contacts: dict[str, list[str]] = field(default_factory=dict)  # by reason, named

    @property
    def stopped_reason(self) -> str | None:
        return None if self.stop is None else str(self.stop)

    @property
    def failed(self) -> int:
        return len(self.execution.failures) if self.execution else 0

    def as_dict(self) -> dict[str, Any]:
        s = self.summary
        data: dict[str, Any] = {
            "user": self.user_id,
            "mode": str(self.mode),
            "dry_run": self.dry_run,
            "created": {"outlook": s.created_in_outlook, "bc": s.created_in_bc},
            "updated": {"outlook": s.updated_outlook, "bc": s.updated_bc},
            "deleted": {"outlook": s.deleted_from_outlook},
            "linked": s.linked,
            "unlinked": s.unlinked,
            "conflicts": s.conflicts,
            "skipped": dict(sorted(s.skipped.items())),
            "stopped_reason": self.stopped_reason,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
        }
        if self.execution:
            data["failures"] = [
                {"bc_id": f.bc_id, "graph_id": f.graph_id, "reason": f.reason}
                for f in self.execution.failures
            ]
            data["fields_left_out"] = self.execution.field_issues
        return data


def refuse_stopped(setup: UserSetup) -> None:
    """A setup sharing another's folder never syncs, whichever path asks (the last guard)."""
    if setup.stopped_reason:
        raise SetupStoppedError(setup.stopped_reason)


async def _find_folder(graph: GraphClient, mailbox: str, name: str) -> str | None:
    for folder in await graph.list_folders(mailbox):
        if str(folder.get("displayName", "")).lower() == name.lower():
            return str(folder["id"])
    return None


async def _compacted(
    pages: AsyncIterator[list[Any]],
    compact: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    """A whole listing as compact records (engine/compact.py), page by page: a full sync holds
    both sides of up to 100,000 pairs, and a page's dicts go as soon as they are converted."""
    kept: list[Mapping[str, Any]] = []
    async for page in pages:
        # In place: each wire dict is freed as soon as its record exists, so a page's dicts
        # and its records are never all alive at once.
        for i in range(len(page)):
            page[i] = compact(page[i])
            if i % _TURN_EVERY == _TURN_EVERY - 1:
                # The loop's turn: the next page's request (prefetched by the client) goes
                # out and its answer comes in while this page is converted, not after.
                await asyncio.sleep(0)
        kept.extend(page)
        del page
        keep_out_of_gc()  # the cyclic GC need not scan these records again (bulk_gc.py)
    return kept


async def _list_folder(
    graph: GraphClient, mailbox: str, folder_id: str, bc_snap: BcSnapshot, links: Sequence[Link]
) -> OutlookSnapshot:
    """The whole folder, compact (engine/compact.py). A contact whose changeKey and BC contact's
    ETag (or modified time) are still its link's has nothing to write: a stub is kept."""
    by_graph_id = {link.graph_id: link for link in links if link.graph_change_key}
    bc_by_id = {canon_bc_id(m.as_text(c.get("id"))): c for c in bc_snap.contacts}
    full = Compactor().graph
    shared: dict[Any, Any] = {}

    def compact(contact: Mapping[str, Any]) -> Mapping[str, Any]:
        link = by_graph_id.get(contact.get("id"))  # type: ignore[arg-type]
        if link is not None:
            bc_contact = bc_by_id.get(link.bc_id)
            if bc_contact is not None and bc_echo(bc_contact, link):
                stub = graph_stub(contact, link.graph_id, link.graph_change_key, link.bc_id,
                                  bc_email=bc_contact.get("email"), shared=shared)
                if stub is not None:
                    return stub
        return full(contact)

    pages = graph.iter_contact_pages(mailbox, folder_id, select=GRAPH_SELECT)
    return OutlookSnapshot.full(await _compacted(pages, compact))


async def _read_outlook(
    graph: GraphClient, mailbox: str, folder_id: str | None, delta_link: str | None, full: bool
) -> tuple[OutlookSnapshot, str | None]:
    if folder_id is None:  # dry run, folder not created yet: it would be empty
        return OutlookSnapshot.full([]), None
    if full:
        pages = graph.iter_contact_pages(mailbox, folder_id, select=GRAPH_SELECT)
        return OutlookSnapshot.full(await _compacted(pages, Compactor().graph)), delta_link
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


@dataclass
class _Inputs:
    """What one run read: both sides (None = not read), the links, and where to write."""

    setup: UserSetup
    mode: SyncMode
    bc: BcSnapshot | None
    outlook: OutlookSnapshot | None
    folder_id: str | None
    since: datetime | None = None
    force: bool = False


async def _plan_and_apply(
    inputs: _Inputs, *, graph: GraphClient, bc: BcClient, store: Store, dry_run: bool,
    links: Sequence[Link] | None = None, reader: Reader | None = None,
    on_written: WriteHook | None = None,
) -> SyncReport:
    """Plan, read exactly what the plan asks (its ReadRequest) and plan again, then execute
    unless this is a dry run. `links` (default: all of the user's), `reader` and `on_written`
    are the near-real-time path's (sync/near_real_time.py)."""
    setup, mode = inputs.setup, inputs.mode
    if links is None:
        links = store.links.for_user(setup.user_id)
    bc_snap, outlook_snap = inputs.bc or BcSnapshot(), inputs.outlook or OutlookSnapshot()

    def plan_now() -> Plan:
        return plan_user(bc_snap, outlook_snap, links, setup, mode, since=inputs.since,
                         force=inputs.force)

    if reader is None:
        reader = Reader(bc, graph, setup.mailbox, inputs.folder_id)
    plan = plan_now()
    for _ in range(READ_ROUNDS):  # a read can lead to another (a contact read, then created)
        if not plan.reads:
            break
        bc_snap, outlook_snap = await reader(plan.reads, bc_snap, outlook_snap)
        plan = plan_now()

    # Only a dry run reports the writes themselves: a full sync's are 100,000 Graph bodies.
    report = SyncReport(setup.user_id, mode, dry_run, plan.summary, plan.stop,
                        planned_writes=plan.writes if dry_run else [])
    if dry_run:
        report.plan = plan_lines(report.planned_writes,
                                 (*bc_snap.contacts, *outlook_snap.contacts))
    report.skipped_contacts = skipped_contacts(
        (a for group in plan.groups for a in group), chain(bc_snap.contacts, outlook_snap.contacts))
    if dry_run or inputs.folder_id is None:
        return report
    if plan.stop is not None:
        store.audit.append(AuditRecord(user_id=setup.user_id, kind=AuditKind.DELETE_RAIL,
                                       details={"reason": str(plan.stop)}))
    executor = Executor(
        graph=graph, bc=bc, store=store, user_id=setup.user_id, mailbox=setup.mailbox,
        folder_id=inputs.folder_id, on_written=on_written,
    )
    report.execution = await executor.run(plan.groups)
    return report


# Folder ids per client, so the near-real-time path does not list a mailbox's folders for
# every change. Kept for a few minutes: a folder a user deleted is created again after that
# (writes into it fail until then, are reported, and are retried by the next run).
FOLDER_TTL = 300.0
_folders: weakref.WeakKeyDictionary[GraphClient, dict[tuple[str, str], tuple[str, float]]] = (
    weakref.WeakKeyDictionary()
)


async def _folder(
    graph: GraphClient, setup: UserSetup, dry_run: bool, *, cached: bool = False
) -> str | None:
    """The user's folder id; `cached` (the near-real-time path) may answer from memory, while
    Sync and Full sync always look (and so recreate a folder the user deleted)."""
    if dry_run:
        return await _find_folder(graph, setup.mailbox, setup.folder_name)
    cache = _folders.setdefault(graph, {})
    key = (setup.mailbox, setup.folder_name)
    hit = cache.get(key)
    if cached and hit is not None and hit[1] > time.monotonic():
        return hit[0]
    folder_id = await graph.find_or_create_folder(setup.mailbox, setup.folder_name)
    cache[key] = (folder_id, time.monotonic() + FOLDER_TTL)
    return folder_id


async def _read_full(
    graph: GraphClient, bc: BcClient, store: Store, setup: UserSetup, folder_id: str | None,
) -> tuple[BcSnapshot, OutlookSnapshot, list[Link]]:
    """Full sync's reads: the BC contacts the user's filter can select (as OData where the
    translation is exact), then the whole folder (stubs where nothing moved), both compact;
    and the user's links, loaded while BC serves the first pages."""
    odata = ContactFilter.parse(setup.contact_filter).to_odata()
    select = sorted({*BC_SELECT, *setup.contact_filter})  # the filter's fields, evaluated
    # Smaller pages than BC's 20,000: the client holds the page being converted and the next
    # one (prefetched). Measured peak RSS at 100,000 contacts, no-change run: 10,000 a page
    # 414 MB, 5,000 311 MB, 2,000 309 MB (the peak moves to planning below 5,000).
    pages = bc.iter_contact_pages(odata, page_size=FULL_LISTING_PAGE, select=select)
    links, listing = await _links_beside_first_page(
        pages, lambda: store.links.for_user(setup.user_id), in_thread=store.threads_may_share
    )
    compact_bc = Compactor({link.bc_id: link for link in links}).bc
    bc_snap = BcSnapshot.full(await _compacted(listing, compact_bc))
    if folder_id is None:  # dry run, folder not created yet: it would be empty
        return bc_snap, OutlookSnapshot.full([]), links
    return bc_snap, await _list_folder(graph, setup.mailbox, folder_id, bc_snap, links), links


async def _links_beside_first_page(
    pages: AsyncGenerator[list[Any], None], load_links: Callable[[], list[Link]], *,
    in_thread: bool,
) -> tuple[list[Link], AsyncIterator[list[Any]]]:
    """The links, loaded in a worker thread while BC serves the listing's first page (and,
    prefetched, the second): 100,000 rows take ~0.8 s that were spent waiting for BC before.
    The pages are converted only after, since BC records share the links' strings."""
    if not in_thread:
        return load_links(), pages
    loading = asyncio.ensure_future(asyncio.to_thread(load_links))
    try:
        first = await anext(pages, None)
    except BaseException:
        await asyncio.wait([loading])  # the thread cannot be stopped: let it end first
        raise
    try:
        links = await loading
    except BaseException:
        await pages.aclose()  # drops the prefetched page's request
        raise
    return links, _prepended(first, pages)


async def _prepended(
    first: list[Any] | None, rest: AsyncIterator[list[Any]]
) -> AsyncIterator[list[Any]]:
    if first is None:
        return
    yield first
    del first  # converted in place by the caller: not kept here while the rest arrive
    async for page in rest:
        yield page


async def sync_user(
    setup: UserSetup,
    mode: SyncMode,
    *,
    graph: GraphClient,
    bc: BcClient,
    store: Store,
    dry_run: bool = False,
    force: bool = False,
) -> SyncReport:
    """BC's "Sync" (changes since the last sync, both ways) or "Full sync" (everything)."""
    refuse_stopped(setup)
    started_clock = time.perf_counter()
    started_at = datetime.now(UTC)
    state = store.state.get(setup.user_id)
    full = mode is SyncMode.FULL or state.last_sync_at is None
    folder_id = await _folder(graph, setup, dry_run)
    links: list[Link] | None = None
    with snapshots_kept_out_of_gc():
        if full:
            bc_snap, outlook_snap, links = await _read_full(graph, bc, store, setup, folder_id)
            new_delta_link = state.delta_link
        else:
            assert state.last_sync_at is not None
            bc_snap = BcSnapshot.changes(await bc.list_changed_since(state.last_sync_at))
            outlook_snap, new_delta_link = await _read_outlook(
                graph, setup.mailbox, folder_id, state.delta_link, full
            )
        # Graph's lastModifiedDateTime has whole seconds: a contact changed in the same second
        # as the last run's start must still count as changed since it (re-planning is harmless).
        since = None if full or state.last_sync_at is None else state.last_sync_at - SINCE_SLACK
        inputs = _Inputs(setup, mode, bc_snap, outlook_snap, folder_id, since, force)
        # What this run reads and writes is the version the links will hold: the next change
        # to these contacts needs no read (near_real_time.Known; the most recent few thousand).
        known = nrt.Known(bc, graph, setup.mailbox)
        known.saw_bc(bc_snap.contacts[-nrt.KNOWN_MAX:])
        known.saw_outlook(outlook_snap.contacts[-nrt.KNOWN_MAX:])
        report = await _plan_and_apply(inputs, graph=graph, bc=bc, store=store,
                                       dry_run=dry_run, links=links,
                                       on_written=None if dry_run else known.written)
        # For pairs another worker (a second applier, a person) wrote between our read and our
        # write (412): re-read just those and plan them as changes, not as a listing.
        conflicts_only = dataclasses.replace(inputs, mode=SyncMode.SYNC, since=None,
                                             bc=None, outlook=None)
    del links, bc_snap, outlook_snap, inputs
    if not dry_run:
        await _replan_conflicts(report, conflicts_only, known,
                                graph=graph, bc=bc, store=store)
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
) -> SyncReport:
    """The near-real-time path: apply known BC changes (snapshots from the change feed) and/or
    the Outlook folder's delta since the stored link (a notification hint), without listing
    either side. Every item given is a change, so no "since" applies. The stored delta link
    advances only after a clean run; the last-sync mark of "Sync" is left alone.
    Reads and echoes are kept down as sync/near_real_time.py describes: the change's own links,
    stale snapshots dropped, known versions written with If-Match, a 412 re-read and re-planned.
    """
    refuse_stopped(setup)
    started_clock = time.perf_counter()
    folder_id = await _folder(graph, setup, dry_run=False, cached=True)
    known = nrt.Known(bc, graph, setup.mailbox)
    outlook_snap: OutlookSnapshot | None = None
    new_delta_link: str | None = None
    if read_outlook_delta:
        state = store.state.get(setup.user_id)
        outlook_snap, new_delta_link = await _read_outlook(
            graph, setup.mailbox, folder_id, state.delta_link, full=False
        )
        known.saw_outlook(outlook_snap.contacts)
    if bc_changes is not None:
        known.saw_bc(bc_changes.contacts)
    links = nrt.links_for(store, setup, bc_changes, outlook_snap)
    bc_changes = await _confirm_unlinked(bc_changes, links, bc, known)
    inputs = _Inputs(setup, SyncMode.SYNC, bc_changes, outlook_snap, folder_id)
    report = await _plan_and_apply(inputs, graph=graph, bc=bc, store=store, dry_run=False,
                                   links=links, reader=nrt.KnownReader(known, links, folder_id),
                                   on_written=known.written)
    await _replan_conflicts(report, inputs, known, graph=graph, bc=bc, store=store)
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


async def _replan_conflicts(report: SyncReport, inputs: _Inputs, known: nrt.Known, *,
                            graph: GraphClient, bc: BcClient, store: Store) -> None:
    """Pairs whose write met a newer version (412): read both sides afresh, plan them again
    and apply that, once; what still fails stays in the report (the next change retries)."""
    execution = report.execution
    if execution is None or not any(f.conflict for f in execution.failures):
        return
    pairs = [(f.bc_id, f.graph_id) for f in execution.failures if f.conflict]
    bc_snap, outlook_snap = await nrt.read_pairs(pairs, bc=bc, graph=graph, known=known)
    links = nrt.links_for(store, inputs.setup, bc_snap, outlook_snap)
    again = dataclasses.replace(inputs, bc=bc_snap, outlook=outlook_snap)
    retry = await _plan_and_apply(again, graph=graph, bc=bc, store=store, dry_run=False,
                                  links=links,
                                  reader=nrt.KnownReader(known, links, inputs.folder_id),
                                  on_written=known.written)
    execution.failures = [f for f in execution.failures if not f.conflict]
    if retry.execution is not None:
        execution.failures.extend(retry.execution.failures)
        execution.writes.update(retry.execution.writes)
        execution.field_issues.extend(retry.execution.field_issues)
        execution.links_saved += retry.execution.links_saved
        execution.links_dropped += retry.execution.links_dropped
        execution.audited += retry.execution.audited
    report.summary.conflicts += retry.summary.conflicts
