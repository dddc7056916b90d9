"""How `sync` and `reconcile` print a run: one header per run kind, one block per user, the
same JSON (schemas/report.py, `schemas/json/run-report.schema.json`), the same exit codes.

    Full sync, dry run: nothing written
    user1@contoso.test: ok, would write 3 changes (0.4 s)
      created  outlook=3 bc=0
      ...
      plan     create in Outlook    Jane Doe <j***@contoso.com>  [bc=...]
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from contactsync.cli.common import EXIT_ERROR, EXIT_PARTIAL

if TYPE_CHECKING:
    from contactsync.sync.reconcile import UserReport

TITLES = {"sync": "Sync", "full_sync": "Full sync", "reconcile": "Reconcile"}
_COUNTED = ("created_outlook", "created_bc", "updated_outlook", "updated_bc",
            "deleted_outlook", "linked", "unlinked", "conflicts", "withheld", "failed", "writes")
_STATUSES = ("ok", "stopped", "failed", "expired", "pending")


def totals(lines: list[UserReport]) -> dict[str, int]:
    counts = {k: sum(int(getattr(line, k)) for line in lines) for k in _COUNTED}
    for status in _STATUSES:
        counts[f"users_{status}"] = sum(1 for line in lines if line.status == status)
    return counts


def header(kind: str, *, dry_run: bool, run_id: str = "", users: int = 1) -> str:
    title = TITLES[kind]
    if kind == "reconcile":
        title += f" {run_id}: Full sync of {users} user(s)" if run_id else ""
    return title + (", dry run: nothing written" if dry_run else "")


def _outcome(line: UserReport) -> str:
    """'did write' only when something was written."""
    took = f"({line.duration_s} s)"
    if line.dry_run:
        return f"would write {line.changes} change(s) {took}" if line.changes else \
            f"nothing to write {took}"
    if line.writes:
        return f"wrote {line.writes} change(s) {took}"
    return f"nothing written {took}"


def print_line(line: UserReport, run_id: str = "") -> None:
    if line.status == "pending":
        typer.echo(f"{line.user_id}: pending, no result yet (the applier may still be "
                   "working on it)" + (f"  run {run_id}" if run_id else ""))
        return
    if line.status == "expired":
        typer.echo(f"{line.user_id}: expired, nothing done: {line.reason}")
        return
    typer.echo(f"{line.user_id}: {line.status}, {_outcome(line)}"
               + (f"  run {run_id}" if run_id else ""))
    typer.echo(f"  created  outlook={line.created_outlook} bc={line.created_bc}")
    typer.echo(f"  updated  outlook={line.updated_outlook} bc={line.updated_bc}")
    typer.echo(f"  deleted  outlook={line.deleted_outlook}")
    typer.echo(f"  linked {line.linked}  unlinked {line.unlinked}  conflicts {line.conflicts}")
    for reason, count in line.skipped.items():
        typer.echo(f"  skipped  {reason}: {count}")
    if line.status == "stopped":
        typer.echo(f"  STOPPED  {line.reason}")
    elif line.reason:
        typer.echo(f"  {line.status.upper()}   {line.reason}")
    for failure in line.failures:
        typer.echo(f"  failed   {failure}")
    for issue in line.fields_left_out:
        typer.echo(f"  left out {issue}")
    for planned in line.plan:
        typer.echo(f"  plan     {planned}")


def exit_code(lines: list[UserReport]) -> int:
    """1 when a user's run did not happen (failed as a whole, expired, no result); 3 when it
    ran but some contacts failed or the safety rail stopped it; else 0."""
    if any(line.status in ("pending", "expired") or (line.status == "failed"
                                                      and not line.failed) for line in lines):
        return EXIT_ERROR
    if any(line.status != "ok" for line in lines):
        return EXIT_PARTIAL
    return 0


def show_run(kind: str, lines: list[UserReport], *, dry_run: bool, as_json: bool,
             run_id: str = "") -> None:
    """Print the run (text or JSON) and end with its exit code."""
    from contactsync.schemas.report import RunKind, RunReport

    lines = sorted(lines, key=lambda line: line.user_id)
    if as_json:
        report = RunReport(kind=RunKind(kind), run_id=run_id, dry_run=dry_run,
                           users=list(lines),
                           totals=totals(lines))
        typer.echo(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        typer.echo(header(kind, dry_run=dry_run, run_id=run_id, users=len(lines)))
        for line in lines:
            print_line(line)
    code = exit_code(lines)
    if code:
        raise typer.Exit(code)
