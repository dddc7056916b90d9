"""The plan loop of every run: plan (pure), read exactly what the plan asks (its ReadRequest,
sync/reads.py) and plan again, then hand the final plan to the executor; after it, pairs whose
write met a newer version (412) are read afresh and planned once more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain

from contactsync.engine.links import Link, SyncMode
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot, Plan, plan_user
from contactsync.schemas.setup import UserSetup
from contactsync.store.records import AuditKind, AuditRecord
from contactsync.sync import near_real_time as nrt
from contactsync.sync.executor import Executor, WriteHook
from contactsync.sync.plan_names import plan_lines, skipped_contacts
from contactsync.sync.reads import Reader
from contactsync.sync.report import SyncReport
from contactsync.sync.session import UserSession

# Plan, read what it asks, plan again: by id, then the searches before creates. A request still
# open after that waits for the next run (its pair writes nothing now).
READ_ROUNDS = 3


@dataclass
class RunInputs:
    """What one run read: both sides (None = not read), the links, and where to write."""

    setup: UserSetup
    mode: SyncMode
    bc: BcSnapshot | None
    outlook: OutlookSnapshot | None
    folder_id: str | None
    since: datetime | None = None
    force: bool = False


async def plan_and_apply(
    inputs: RunInputs, session: UserSession, *, dry_run: bool,
    links: Sequence[Link] | None = None, reader: Reader | None = None,
    on_written: WriteHook | None = None,
    every_link: Callable[[], Sequence[Link]] | None = None,
) -> SyncReport:
    """Plan, read exactly what the plan asks (its ReadRequest) and plan again, then execute
    unless this is a dry run. `links` (default: all of the user's), `reader` and `on_written`
    are the near-real-time path's (sync/near_real_time.py). `every_link`: `links` are only the
    change's, and this loads all of the user's, for a plan the delete rail stops."""
    setup, mode = inputs.setup, inputs.mode
    graph, bc, store = session.graph, session.bc, session.store
    planned_links = store.links.for_user(setup.user_id) if links is None else links
    bc_snap, outlook_snap = inputs.bc or BcSnapshot(), inputs.outlook or OutlookSnapshot()

    def plan_now() -> Plan:
        return plan_user(bc_snap, outlook_snap, planned_links, setup, mode, since=inputs.since,
                         force=inputs.force)

    if reader is None:
        reader = Reader(bc, graph, setup.mailbox, inputs.folder_id)

    async def plan_with_reads() -> Plan:
        nonlocal bc_snap, outlook_snap
        plan = plan_now()
        for _ in range(READ_ROUNDS):  # a read can lead to another (a contact read, then created)
            if not plan.reads:
                break
            bc_snap, outlook_snap = await reader(plan.reads, bc_snap, outlook_snap)
            del plan  # not two plans of a 100,000-contact run alive at once
            plan = plan_now()
        return plan

    plan = await plan_with_reads()
    if plan.stop is not None and every_link is not None:
        # The rail weighs the removals against the folder, which the change's links undercount:
        # a stop on them may be none on all of them (a smaller folder only stops sooner, so a
        # plan that passes on the change's links passes on all). Rare: a change removing more
        # than the rail's floor; every other change never loads the user's 100,000 links.
        del plan
        planned_links = every_link()
        plan = await plan_with_reads()

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


async def replan_conflicts(report: SyncReport, inputs: RunInputs, session: UserSession,
                           on_written: WriteHook | None = None) -> None:
    """Pairs whose write met a newer version (412): read both sides afresh, plan them again
    and apply that, once; what still fails stays in the report (the next change retries)."""
    execution = report.execution
    if execution is None or not any(f.conflict for f in execution.failures):
        return
    pairs = [(f.bc_id, f.graph_id) for f in execution.failures if f.conflict]
    graph, bc, store, known = session.graph, session.bc, session.store, session.known
    bc_snap, outlook_snap = await nrt.read_pairs(pairs, bc=bc, graph=graph, known=known)
    links = nrt.links_for(store, inputs.setup, bc_snap, outlook_snap)
    again = dataclasses.replace(inputs, bc=bc_snap, outlook=outlook_snap)
    retry = await plan_and_apply(again, session, dry_run=False,
                                  links=links,
                                  reader=nrt.KnownReader(known, links, inputs.folder_id),
                                  on_written=on_written or known.written,
                                  every_link=nrt.every_link(store, inputs.setup))
    execution.failures = [f for f in execution.failures if not f.conflict]
    if retry.execution is not None:
        execution.failures.extend(retry.execution.failures)
        execution.writes.update(retry.execution.writes)
        execution.field_issues.extend(retry.execution.field_issues)
        execution.links_saved += retry.execution.links_saved
        execution.links_dropped += retry.execution.links_dropped
        execution.audited += retry.execution.audited
    report.summary.conflicts += retry.summary.conflicts
