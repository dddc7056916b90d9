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

import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from contactsync.clients.bc import BcClient, odata_literal
from contactsync.clients.errors import NotFound, SyncStateExpired
from contactsync.clients.graph import GraphClient
from contactsync.engine.actions import Action, CreateInBc
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.links import SyncMode
from contactsync.engine.mapping import BC_SELECT, GRAPH_SELECT
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot, Plan, PlanSummary, plan_user
from contactsync.store import Store
from contactsync.store.records import AuditKind, AuditRecord
from contactsync.sync.executor import ExecutionReport, Executor
from schemas.setup import UserSetup

SINCE_SLACK = timedelta(seconds=2)


@dataclass
class SyncReport:
    user_id: str
    mode: SyncMode
    dry_run: bool
    summary: PlanSummary
    stopped_reason: str | None = None
    execution: ExecutionReport | None = None
    duration_s: float = 0.0
    planned_writes: list[Action] = field(default_factory=list)

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


async def _find_folder(graph: GraphClient, mailbox: str, name: str) -> str | None:
    for folder in await graph.list_folders(mailbox):
        if str(folder.get("displayName", "")).lower() == name.lower():
            return str(folder["id"])
    return None


async def _read_outlook(
    graph: GraphClient, mailbox: str, folder_id: str | None, delta_link: str | None, full: bool
) -> tuple[OutlookSnapshot, str | None]:
    if folder_id is None:  # dry run, folder not created yet: it would be empty
        return OutlookSnapshot.full([]), None
    if full:
        contacts = await graph.list_contacts(mailbox, folder_id, select=GRAPH_SELECT)
        return OutlookSnapshot.full(contacts), delta_link
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


async def _read_needed(
    plan: Plan, bc: BcClient, graph: GraphClient, mailbox: str,
    bc_snap: BcSnapshot, outlook_snap: OutlookSnapshot,
) -> tuple[BcSnapshot, OutlookSnapshot]:
    """Read the contacts the planner could not decide without (NeedsRead), by id."""
    bc_found, bc_gone = list(bc_snap.contacts), set(bc_snap.deleted_ids)
    for bc_id in plan.needs_bc:
        try:
            bc_found.append(await bc.get_contact(bc_id))
        except NotFound:
            bc_gone.add(bc_id)
    out_found, out_gone = list(outlook_snap.contacts), set(outlook_snap.removed_ids)
    for graph_id in plan.needs_outlook:
        try:
            out_found.append(await graph.get_contact(mailbox, graph_id))
        except NotFound:
            out_gone.add(graph_id)
    return (
        BcSnapshot(tuple(bc_found), bc_snap.complete, frozenset(bc_gone)),
        OutlookSnapshot(tuple(out_found), outlook_snap.complete, frozenset(out_gone)),
    )


async def _bc_contacts_with_emails_of(
    plan: Plan, bc: BcClient, bc_snap: BcSnapshot
) -> list[dict[str, Any]]:
    """Before creating a BC contact from Outlook, look BC up by its email: the listing may not
    hold the match (an incremental read, or one narrowed by the user's filter). A match is
    linked (or skipped when outside the filter) instead of creating a duplicate in BC."""
    known = {str(c.get("id")) for c in bc_snap.contacts}
    found: list[dict[str, Any]] = []
    for action in plan.writes:
        if not isinstance(action, CreateInBc):
            continue
        email = str(action.fields.get("email", ""))
        if not email:
            continue
        # BC compares text case-sensitively in $filter; emails are matched case-insensitively.
        variants = sorted({email, email.lower(), email.upper()})
        query = " or ".join(f"email eq {odata_literal(v)}" for v in variants)
        for contact in await bc.list_contacts(query):
            if str(contact.get("id")) not in known:
                known.add(str(contact.get("id")))
                found.append(contact)
    return found


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
    inputs: _Inputs, *, graph: GraphClient, bc: BcClient, store: Store, dry_run: bool
) -> SyncReport:
    """Plan (reading what the planner asks for, and BC by email before creating there), then
    execute unless this is a dry run."""
    setup, mode = inputs.setup, inputs.mode
    links = store.links.for_user(setup.user_id)
    bc_snap, outlook_snap = inputs.bc or BcSnapshot(), inputs.outlook or OutlookSnapshot()

    def plan_now() -> Plan:
        return plan_user(bc_snap, outlook_snap, links, setup, mode, since=inputs.since,
                         force=inputs.force)

    plan = plan_now()
    if plan.needs_bc or plan.needs_outlook:
        bc_snap, outlook_snap = await _read_needed(
            plan, bc, graph, setup.mailbox, bc_snap, outlook_snap
        )
        plan = plan_now()
    found = await _bc_contacts_with_emails_of(plan, bc, bc_snap)
    if found:
        bc_snap = BcSnapshot((*bc_snap.contacts, *found), bc_snap.complete,
                             bc_snap.deleted_ids)
        plan = plan_now()

    report = SyncReport(setup.user_id, mode, dry_run, plan.summary, plan.stopped_reason,
                        planned_writes=plan.writes)
    if dry_run or inputs.folder_id is None:
        return report
    if plan.stopped_reason:
        store.audit.append(AuditRecord(user_id=setup.user_id, kind=AuditKind.DELETE_RAIL,
                                       details={"reason": plan.stopped_reason}))
    executor = Executor(
        graph=graph, bc=bc, store=store, user_id=setup.user_id, mailbox=setup.mailbox,
        folder_id=inputs.folder_id, verify_creates=not outlook_snap.complete,
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
    started_clock = time.perf_counter()
    started_at = datetime.now(UTC)
    state = store.state.get(setup.user_id)
    full = mode is SyncMode.FULL or state.last_sync_at is None
    folder_id = await _folder(graph, setup, dry_run)
    if full:
        odata = ContactFilter.parse(setup.contact_filter).to_odata()
        select = sorted({*BC_SELECT, *setup.contact_filter})  # the filter's fields, evaluated
        bc_snap = BcSnapshot.full(await bc.list_contacts(odata, select=select))
    else:
        assert state.last_sync_at is not None
        bc_snap = BcSnapshot.changes(await bc.list_changed_since(state.last_sync_at))
    outlook_snap, new_delta_link = await _read_outlook(
        graph, setup.mailbox, folder_id, state.delta_link, full
    )
    # Graph's lastModifiedDateTime has whole seconds: a contact changed in the same second as
    # the last run's start must still count as changed since it (re-planning one is harmless).
    since = None if full or state.last_sync_at is None else state.last_sync_at - SINCE_SLACK
    inputs = _Inputs(setup, mode, bc_snap, outlook_snap, folder_id, since, force)
    report = await _plan_and_apply(inputs, graph=graph, bc=bc, store=store, dry_run=dry_run)
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
    advances only after a clean run; the last-sync mark of "Sync" is left alone."""
    started_clock = time.perf_counter()
    folder_id = await _folder(graph, setup, dry_run=False, cached=True)
    outlook_snap: OutlookSnapshot | None = None
    new_delta_link: str | None = None
    if read_outlook_delta:
        state = store.state.get(setup.user_id)
        outlook_snap, new_delta_link = await _read_outlook(
            graph, setup.mailbox, folder_id, state.delta_link, full=False
        )
    inputs = _Inputs(setup, SyncMode.SYNC, bc_changes, outlook_snap, folder_id)
    report = await _plan_and_apply(inputs, graph=graph, bc=bc, store=store, dry_run=False)
    if (read_outlook_delta and report.execution is not None
            and not report.execution.failures):
        store.state.set_delta_link(setup.user_id, new_delta_link)
    report.duration_s = time.perf_counter() - started_clock
    return report
