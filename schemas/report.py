"""The report of a run, as `sync --json` and `reconcile --json` print it: one schema for both.

`schemas/json/run-report.schema.json` is generated from `RunReport` (`contactsync schemas
export`); scripts can validate what they read against it. `contactsync.sync.reconcile.
UserReport` is a `UserLine` with the code that fills it.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


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


class RunReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RunKind
    run_id: str = Field(default="", description="a reconcile's run id; empty for a sync")
    dry_run: bool = False
    users: list[UserLine]
    totals: dict[str, int] = Field(default_factory=dict)
