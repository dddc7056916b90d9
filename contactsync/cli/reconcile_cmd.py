"""`contactsync reconcile`: the full-reconcile job, on demand, on a schedule, and its reports.

    reconcile --user U [--user V ...] | --all  [--dry-run] [--force] [--wait] [--json]
    reconcile ... --inline      in this process, without Kafka
    reconcile --schedule        the scheduler role alone (`contactsync run` runs it too)
    reconcile --last [--user U] the last kept report of each user (audit records)

Exit code 2 when a user's reconcile failed, was stopped by the mass-delete rail, or (with
--wait) did not report within --timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from contactsync.cli.common import MetricsPort, run_role, settings_and_logging, user_errors

# The reconcile itself, the store and the clients load when the command runs (see
# contactsync.cli.common); Kafka (producers.reconcile) only when a run goes through it.
if TYPE_CHECKING:
    from contactsync.settings import Settings
    from contactsync.store import Store
    from contactsync.sync.reconcile import UserReport


def _users(store: Store, named: list[str], all_users: bool) -> list[str]:
    from contactsync.sync.services import ConfigError

    if bool(named) == all_users:
        raise ConfigError("name the users with --user (repeatable), or use --all")
    if all_users:
        return [s.user_id for s in store.setups.list_all() if s.syncs]
    for user_id in named:
        setup = store.setups.require(user_id)
        if not setup.enabled:
            raise ConfigError(f"sync is disabled for {user_id}: `users enable` it first")
        if setup.stopped_reason:
            raise ConfigError(setup.stopped_reason)
    return list(dict.fromkeys(named))


def _progress(total: int) -> Any:
    return typer.progressbar(length=total, label="reconcile", file=sys.stderr,
                             show_pos=True)


def _totals(lines: list[UserReport]) -> dict[str, int]:
    from contactsync.sync.reconcile import PENDING
    from schemas.messages import ResultStatus

    keys = ("created_outlook", "created_bc", "updated_outlook", "updated_bc",
            "deleted_outlook", "linked", "unlinked", "conflicts", "failed", "writes")
    totals = {k: sum(int(getattr(line, k)) for line in lines) for k in keys}
    for status in (ResultStatus.OK, ResultStatus.STOPPED, ResultStatus.FAILED, PENDING):
        totals[f"users_{status}"] = sum(1 for line in lines if line.status == status)
    return totals


def _print_line(line: UserReport, run_id: str = "") -> None:
    from contactsync.sync.reconcile import PENDING
    from schemas.messages import ResultStatus

    verb = "would" if line.dry_run else "did"
    head = f"{line.user_id}: {line.status}"
    if line.status != PENDING:
        head += f" ({verb} write; {line.duration_s} s)"
    typer.echo(head + (f"  run {run_id}" if run_id else ""))
    if line.status == PENDING:
        typer.echo("  no result yet (the applier may still be working on it)")
        return
    typer.echo(f"  created  outlook={line.created_outlook} bc={line.created_bc}")
    typer.echo(f"  updated  outlook={line.updated_outlook} bc={line.updated_bc}")
    typer.echo(f"  deleted  outlook={line.deleted_outlook}")
    typer.echo(f"  linked {line.linked}  unlinked {line.unlinked}  conflicts {line.conflicts}")
    for reason, count in line.skipped.items():
        typer.echo(f"  skipped  {reason}: {count}")
    if line.status == ResultStatus.STOPPED:
        typer.echo(f"  STOPPED  {line.reason}")
    elif line.reason:
        typer.echo(f"  {line.status.upper()}   {line.reason}")


def _report(run_id: str, lines: list[UserReport], *, dry_run: bool, as_json: bool) -> None:
    from schemas.messages import ResultStatus

    lines = sorted(lines, key=lambda line: line.user_id)
    if as_json:
        typer.echo(json.dumps({"run_id": run_id, "dry_run": dry_run,
                               "users": [line.as_dict() for line in lines],
                               "totals": _totals(lines)}, indent=2))
    else:
        typer.echo(f"reconcile {run_id}: {len(lines)} user(s)")
        for line in lines:
            _print_line(line)
    if any(line.status != ResultStatus.OK for line in lines):
        raise typer.Exit(2)


async def _inline(settings: Settings, store: Store, users: list[str], run_id: str,
                  dry_run: bool, force: bool) -> list[UserReport]:
    from contactsync.sync.reconcile import reconcile_user
    from contactsync.sync.services import open_services

    lines: list[UserReport] = []
    async with open_services(settings, store) as services:
        with _progress(len(users)) as bar:
            for user_id in users:  # one after the other: a user's calls stay within budget
                lines.append(await reconcile_user(
                    store.setups.require(user_id), graph=services.graph, bc=services.bc,
                    store=store, run_id=run_id, dry_run=dry_run, force=force))
                bar.update(1)
    return lines


def _through_kafka(settings: Settings, users: list[str], run_id: str, *, dry_run: bool,
                   force: bool, wait: bool, timeout: float) -> list[UserReport] | None:
    from contactsync.sync.reconcile import PENDING, UserReport
    from producers.reconcile import CommandPublisher, ResultWaiter, reconcile_command

    waiter = ResultWaiter(settings) if wait else None  # from the end, before publishing
    publisher = CommandPublisher(settings)
    try:
        publisher.publish([reconcile_command(u, run_id, dry_run=dry_run, force=force,
                                             reason="on demand") for u in users])
        if waiter is None:
            return None
        with _progress(len(users)) as bar:
            results = waiter.follow(run_id, users, timeout, lambda _: bar.update(1))
    finally:
        publisher.close()
        if waiter is not None:
            waiter.close()
    return [UserReport.from_result(results[u]) if u in results else UserReport(u, PENDING)
            for u in users]


def _show_last(store: Store, users: list[str], as_json: bool) -> None:
    from contactsync.sync.reconcile import last_reports

    found = last_reports(store, users or None)
    if as_json:
        typer.echo(json.dumps([{"run_id": run_id, **line.as_dict()} for run_id, line in found],
                              indent=2))
        return
    if not found:
        typer.echo("no reconcile report kept yet")
    for run_id, line in found:
        _print_line(line, run_id)


def reconcile(
    user: Annotated[list[str] | None, typer.Option(
        "--user", "-u", help="A user to reconcile (repeatable)")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Every enabled user")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only, write nothing")] = False,
    force: Annotated[bool, typer.Option(help="Override the mass-delete safety rail")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the results and print the report")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON")] = False,
    inline: Annotated[bool, typer.Option(help="Run here, without Kafka")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits for results")] = 3600.0,
    schedule: Annotated[bool, typer.Option(
        "--schedule", help="Run the scheduler (reconcile_schedule, reconcile_jitter)")] = False,
    last: Annotated[bool, typer.Option("--last", help="Show the last kept reports")] = False,
    metrics_port: MetricsPort = None,
) -> None:
    """Full reconcile: repair drift between BC and Outlook for some or all users."""
    if schedule:
        from producers.reconcile import run_scheduler

        run_role("reconcile scheduler", run_scheduler, metrics_port)
        return
    from contactsync.sync.run_ids import new_run_id
    from contactsync.sync.services import open_store

    settings = settings_and_logging()
    with user_errors(), open_store(settings) as store:
        if last:
            _show_last(store, user or [], as_json)
            return
        users = _users(store, user or [], all_users)
        run_id = new_run_id("inline" if inline else "cli")
        if inline:
            lines: list[UserReport] | None = asyncio.run(
                _inline(settings, store, users, run_id, dry_run, force))
        else:
            lines = _through_kafka(settings, users, run_id, dry_run=dry_run, force=force,
                                   wait=wait, timeout=timeout)
    if lines is None:
        if as_json:
            typer.echo(json.dumps({"run_id": run_id, "dry_run": dry_run, "published": users}))
        else:
            typer.echo(f"reconcile {run_id}: published a command for {len(users)} user(s); "
                       "`--wait` follows the results, `reconcile --last` shows kept reports")
        return
    _report(run_id, lines, dry_run=dry_run, as_json=as_json)
