"""The report of one user's run (Sync, Full sync, a near-real-time change): what the plan
decided, what the executor wrote, the safety rail's stop. The CLI, the console, the applier's
result and the reconcile's line (schemas.report.UserLine) are all made from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contactsync.engine.actions import Action
from contactsync.engine.links import SyncMode
from contactsync.engine.planner import PlanSummary
from contactsync.engine.rails import MassDeleteStop
from contactsync.schemas.messages import ResultStatus
from contactsync.schemas.report import UserLine
from contactsync.sync.executor import ExecutionReport


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
    # BC contacts as our writes left them (the service's answers), near-real-time runs only:
    # the applier publishes them as BC changes, for the other users' folders (consumers/applier).
    bc_written: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stopped_reason(self) -> str | None:
        return None if self.stop is None else str(self.stop)

    @property
    def failed(self) -> int:
        return len(self.execution.failures) if self.execution else 0

    def line(self) -> UserLine:
        """This run as one user's line of a run report (schemas.report.UserLine)."""
        s, execution = self.summary, self.execution
        status = ResultStatus.STOPPED if self.stop is not None else (
            ResultStatus.FAILED if self.failed else ResultStatus.OK)
        reason = str(self.stop or "")
        if self.failed and execution is not None:
            reason = f"{self.failed} contact(s) failed; first: {execution.failures[0].reason}"
        return UserLine(
            user_id=self.user_id, status=str(status), dry_run=self.dry_run,
            created_outlook=s.created_in_outlook, created_bc=s.created_in_bc,
            updated_outlook=s.updated_outlook, updated_bc=s.updated_bc,
            deleted_outlook=s.deleted_from_outlook, linked=s.linked, unlinked=s.unlinked,
            conflicts=s.conflicts, withheld=s.withheld, failed=self.failed,
            writes=sum(execution.writes.values()) if execution else 0,
            skipped=dict(sorted(s.skipped.items())), duration_s=round(self.duration_s, 3),
            reason=reason, plan=list(self.plan), skipped_contacts=self.skipped_contacts,
            failures=[f"bc={f.bc_id} outlook={f.graph_id}: {f.reason}"
                      for f in (execution.failures if execution else [])],
            fields_left_out=list(execution.field_issues) if execution else [],
        )
