"""The full reconcile of one user, and its report (issue 6).

A reconcile is a Full sync (runner.sync_user, SyncMode.FULL): both complete listings are
compared, so drift made behind the pipeline's back is repaired: contacts missing on either
side, stale fields, links whose contact is gone, several Outlook contacts carrying one BC id,
contacts that left the user's filter; an expired delta link or a lost last-sync mark does not
matter to it (it reads no delta and no mark). The planner's mass-delete rail stops a user's run
that would remove too much of the folder, unless forced.

One report line per user, the same whether the run was inline (`UserReport.from_report`) or
through Kafka (`UserReport.from_result`, from the applier's `sync.result`). A run that wrote
(not a dry run) keeps its line in the audit records (kind `reconcile_report`).
"""

from __future__ import annotations

from typing import Any

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import ServiceError
from contactsync.clients.graph import GraphClient
from contactsync.engine.bcfilter import FilterError
from contactsync.engine.links import SyncMode
from contactsync.schemas.messages import ResultStatus, SyncResult
from contactsync.schemas.report import UserLine
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.store.records import AuditKind, AuditRecord
from contactsync.sync.runner import SyncReport, sync_user

PENDING = "pending"  # no result arrived in time


class UserReport(UserLine):
    """One user's line of a run (the contract: schemas.report.UserLine), made from a report
    of this process or from an applier's result."""

    @property
    def changes(self) -> int:
        return (self.created_outlook + self.created_bc + self.updated_outlook + self.updated_bc
                + self.deleted_outlook + self.linked + self.unlinked)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserReport:
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    @classmethod
    def from_report(cls, report: SyncReport) -> UserReport:
        s, execution = report.summary, report.execution
        status = ResultStatus.STOPPED if report.stop is not None else (
            ResultStatus.FAILED if report.failed else ResultStatus.OK)
        reason = str(report.stop or "")
        if report.failed and execution is not None:
            reason = f"{report.failed} contact(s) failed; first: {execution.failures[0].reason}"
        return cls(
            user_id=report.user_id, status=str(status), dry_run=report.dry_run,
            created_outlook=s.created_in_outlook, created_bc=s.created_in_bc,
            updated_outlook=s.updated_outlook, updated_bc=s.updated_bc,
            deleted_outlook=s.deleted_from_outlook, linked=s.linked, unlinked=s.unlinked,
            conflicts=s.conflicts, withheld=s.withheld, failed=report.failed,
            writes=sum(execution.writes.values()) if execution else 0,
            skipped=dict(sorted(s.skipped.items())), duration_s=round(report.duration_s, 3),
            reason=reason, plan=list(report.plan), skipped_contacts=report.skipped_contacts,
            failures=[f"bc={f.bc_id} outlook={f.graph_id}: {f.reason}"
                      for f in (execution.failures if execution else [])],
            fields_left_out=list(execution.field_issues) if execution else [],
        )

    @classmethod
    def from_result(cls, result: SyncResult) -> UserReport:
        n = result.summary.get
        return cls(
            user_id=result.user_id, status=str(result.status), dry_run=result.dry_run,
            created_outlook=n("created_in_outlook", 0), created_bc=n("created_in_bc", 0),
            updated_outlook=n("updated_outlook", 0), updated_bc=n("updated_bc", 0),
            deleted_outlook=n("deleted_from_outlook", 0), linked=n("linked", 0),
            unlinked=n("unlinked", 0), conflicts=n("conflicts", 0), withheld=n("withheld", 0),
            failed=n("failed", 0), writes=n("writes", 0),
            skipped=dict(sorted(result.skipped.items())),
            duration_s=round(result.duration_ms / 1000, 3), reason=result.reason,
            plan=list(result.plan),
        )


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
        line = UserReport.from_report(report)
    record_report(store, line, run_id)
    return line
