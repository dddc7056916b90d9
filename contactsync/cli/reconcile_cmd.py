"""`contactsync reconcile`: the full-reconcile job, on demand, on a schedule, and its reports.

    reconcile --user U [--user V ...] | --all  [--dry-run] [--force] [--wait] [--json]
    reconcile ... --inline      in this process, without Kafka
    reconcile --schedule        the scheduler role alone (`contactsync run` runs it too)
    reconcile --last [--user U] the last kept report of each user (audit records)

Exit code 3 when contacts failed or the mass-delete rail stopped a user's reconcile; 1 when a
user's reconcile failed as a whole, expired before an applier took it, or (with --wait) did
not report within --timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from contactsync.cli.common import (
    MetricsPort,
    kafka_bootstrap,
    run_role,
    settings_and_logging,
)
from contactsync.cli.report_view import print_line, show_run

APPLIER_GRACE_S = 5.0  # how long `--wait` looks for an applier before it says there is none

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
            raise ConfigError(f"sync is disabled for {user_id}: `contactsync users "
                              f"enable {user_id}` first")
        if setup.stopped_reason:
            raise ConfigError(setup.stopped_reason)
    return list(dict.fromkeys(named))


def _progress(total: int) -> Any:
    return typer.progressbar(length=total, label="reconcile", file=sys.stderr,
                             show_pos=True)


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
    from contactsync.producers.reconcile import CommandPublisher, ResultWaiter, reconcile_command
    from contactsync.sync.reconcile import PENDING, UserReport

    kafka_bootstrap(settings)  # a broker that is not there: one sentence, in seconds
    if wait:
        _require_applier(settings)
    waiter = ResultWaiter(settings) if wait else None  # from the end, before publishing
    publisher = CommandPublisher(settings)
    try:
        publisher.publish([reconcile_command(u, run_id, dry_run=dry_run, force=force,
                                             reason="on demand", expires_in=timeout)
                           for u in users])
        if waiter is None:
            return None
        with _progress(len(users)) as bar:
            results = waiter.follow(run_id, users, timeout, lambda _: bar.update(1),
                                    _still_waiting)
    finally:
        publisher.close()
        if waiter is not None:
            waiter.close()
    return [UserReport.from_result(results[u]) if u in results
            else UserReport(user_id=u, status=PENDING) for u in users]


def _still_waiting(pending: int, waited: float) -> None:
    typer.echo(f"\nstill waiting for {pending} user(s) after {waited:.0f} s (an applier is "
               "working on them; Ctrl-C stops waiting, the run goes on)", err=True)


def _require_applier(settings: Settings) -> None:
    """`--wait` with nobody to take the commands would wait out --timeout: say so now, and
    publish nothing."""
    from contactsync.consumers.applier import GROUP_ID
    from contactsync.kafka.topics import SYNC_COMMANDS, topic_name
    from contactsync.producers.reconcile import consumers_of
    from contactsync.sync.services import ConfigError

    topic = topic_name(settings, SYNC_COMMANDS)
    if not consumers_of(settings, GROUP_ID, topic, wait=APPLIER_GRACE_S):
        raise ConfigError(f"no applier is consuming {topic} (the consumer group {GROUP_ID} "
                          "has no member on it): start `contactsync applier` or `contactsync "
                          "run`, then ask again; nothing was published")


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
        print_line(line, run_id)


def reconcile(
    user: Annotated[list[str] | None, typer.Option(
        "--user", "-u", help="A user to reconcile (repeatable)")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Every enabled user")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only, write nothing")] = False,
    force: Annotated[bool, typer.Option(help="Override the mass-delete safety rail")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the results and print the report")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON")] = False,
    inline: Annotated[bool, typer.Option(help="Run here, without Kafka")] = False,
    timeout: Annotated[float, typer.Option(
        min=1, help="Seconds --wait waits for results; a command no applier took by then "
        "is dropped (result `expired`)")] = 3600.0,
    schedule: Annotated[bool, typer.Option(
        "--schedule", help="Run the scheduler (reconcile_schedule, reconcile_jitter)")] = False,
    last: Annotated[bool, typer.Option("--last", help="Show the last kept reports")] = False,
    metrics_port: MetricsPort = None,
) -> None:
    """Full reconcile: repair drift between BC and Outlook for some or all users."""
    if schedule:
        from contactsync.producers.reconcile import run_scheduler

        run_role("reconcile scheduler", run_scheduler, metrics_port)
        return
    from contactsync.sync.run_ids import new_run_id
    from contactsync.sync.services import open_store

    settings = settings_and_logging()
    with open_store(settings) as store:
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
    show_run("reconcile", lines, dry_run=dry_run, as_json=as_json, run_id=run_id)
