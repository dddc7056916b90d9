"""The full reconcile of one user, and its report (issue 6).

A reconcile is a Full sync (runner.sync_user, SyncMode.FULL): both complete listings are
compared, so drift made behind the pipeline's back is repaired: contacts missing on either
side, stale fields, links whose contact is gone, several Outlook contacts carrying one BC id,
contacts that left the user's filter; an expired delta link or a lost last-sync mark does not
matter to it (it reads no delta and no mark). The planner's mass-delete rail stops a user's run
that would remove too much of the folder, unless forced.

One report line per user (schemas.report.UserLine), the same whether the run was inline
(`SyncReport.line()`) or through Kafka (`UserLine.from_result`, from the applier's
`sync.result`). A run that wrote (not a dry run) keeps its line in the audit records (kind
`reconcile_report`).
"""

from __future__ import annotations

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import ServiceError
from contactsync.clients.graph import GraphClient
from contactsync.engine.bcfilter import FilterError
from contactsync.engine.links import SyncMode
from contactsync.schemas.messages import ResultStatus
from contactsync.schemas.report import UserLine
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.store.records import AuditKind, AuditRecord
from contactsync.sync.runner import sync_user

PENDING = "pending"  # no result arrived in time


UserReport = UserLine  # one user's line of a run (its old name here)


def record_report(store: Store, line: UserReport, run_id: str) -> None:
    """Keep a (non-dry) run's line in the audit records; a dry run changes nothing."""
    if line.dry_run:
        return
    store.audit.append(AuditRecord(user_id=line.user_id, kind=AuditKind.RECONCILE_REPORT,
                                   details={"run_id": run_id, **line.as_dict()}))


def last_reports(store: Store, user_ids: list[str] | None = None) -> list[tuple[str, UserReport]]:
    """The newest kept report of each user (all users with one when None): (run id, line)."""
    if user_ids:
        records = [r for u in user_ids for r in store.audit.list_records(
            user_id=u, kind=AuditKind.RECONCILE_REPORT, limit=1)]
    else:
        seen: set[str] = set()
        records = []
        for r in store.audit.list_records(kind=AuditKind.RECONCILE_REPORT, limit=10_000):
            if r.user_id not in seen:
                seen.add(r.user_id)
                records.append(r)
    out = [(str(r.details.get("run_id", "")), UserReport.from_dict(r.details)) for r in records]
    return sorted(out, key=lambda item: item[1].user_id)


async def reconcile_user(
    setup: UserSetup,
    *,
    graph: GraphClient,
    bc: BcClient,
    store: Store,
    run_id: str,
    dry_run: bool = False,
    force: bool = False,
) -> UserReport:
    """One user's reconcile in this process (`reconcile --inline`); a service error fails this
    user's line, not the run."""
    try:
        report = await sync_user(setup, SyncMode.FULL, graph=graph, bc=bc, store=store,
                                 dry_run=dry_run, force=force)
    except (ServiceError, FilterError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, FilterError):
            reason = f"invalid filter: {reason}"
        line = UserReport(user_id=setup.user_id, status=str(ResultStatus.FAILED), dry_run=dry_run,
                          reason=reason)
    else:
        line = report.line()
    record_report(store, line, run_id)
    return line
