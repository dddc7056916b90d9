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
