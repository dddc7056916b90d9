"""The report of a run, as `sync --json` and `reconcile --json` print it: one schema for both.

`schemas/json/run-report.schema.json` is generated from `RunReport` (`contactsync schemas
export`); scripts can validate what they read against it. A run of this process makes its line
with `contactsync.sync.report.SyncReport.line()`, an applier's run with `UserLine.from_result`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from contactsync.schemas.messages import SyncResult


class RunKind(StrEnum):
    SYNC = "sync"  # "Sync": changes since the last sync
    FULL_SYNC = "full_sync"  # "Full sync" of one user
    RECONCILE = "reconcile"  # a Full sync of some or all users, one run id


class UserLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str
    status: str = Field(description="ok | stopped (safety rail) | failed | expired | pending")
    dry_run: bool = False
    created_outlook: int = 0
    created_bc: int = 0
    updated_outlook: int = 0
    updated_bc: int = 0
    deleted_outlook: int = 0
    linked: int = 0
    unlinked: int = 0
    conflicts: int = 0
    withheld: int = Field(default=0, description="removals held back by the safety rail")
    failed: int = Field(default=0, description="contacts that could not be written")
    writes: int = Field(default=0, description="writes made to Graph and BC")
    skipped: dict[str, int] = Field(default_factory=dict, description="count by reason")
    skipped_contacts: dict[str, list[str]] = Field(
        default_factory=dict, description="the contacts skipped, by reason (email masked; "
        "the first 100 of each reason)")
    duration_s: float = 0.0
    reason: str = Field(default="", description="why the run stopped, failed or expired")
    plan: list[str] = Field(default_factory=list,
                            description="a dry run's writes: what, to whom (email masked)")
    failures: list[str] = Field(default_factory=list, description="one line per failed contact")
    fields_left_out: list[str] = Field(
        default_factory=list, description="fields not written because BC would refuse them")

    @property
    def changes(self) -> int:
        return (self.created_outlook + self.created_bc + self.updated_outlook + self.updated_bc
                + self.deleted_outlook + self.linked + self.unlinked)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserLine:
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    @classmethod
    def from_result(cls, result: SyncResult) -> UserLine:
        """The line of a run an applier made, from its `sync.result`."""
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


class RunReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RunKind
    run_id: str = Field(default="", description="a reconcile's run id; empty for a sync")
    dry_run: bool = False
    users: list[UserLine]
    totals: dict[str, int] = Field(default_factory=dict)
