"""`contactsync sync USER [--full] [--dry-run]`: BC's "Sync" and "Full sync", inline."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer

from contactsync.cli.common import settings_and_logging, user_errors

if TYPE_CHECKING:  # the sync, the store and the clients load when the command runs
    from contactsync.sync.runner import SyncReport


def _print(report: SyncReport) -> None:
    data = report.as_dict()
    verb = "would" if report.dry_run else "did"
    typer.echo(f"{report.user_id}: {report.mode} sync ({verb} write; {data['duration_s']} s)")
    typer.echo(f"  created  outlook={data['created']['outlook']} bc={data['created']['bc']}")
    typer.echo(f"  updated  outlook={data['updated']['outlook']} bc={data['updated']['bc']}")
    typer.echo(f"  deleted  outlook={data['deleted']['outlook']}")
    typer.echo(f"  linked {data['linked']}  unlinked {data['unlinked']}  "
               f"conflicts {data['conflicts']}")
    for reason, count in data["skipped"].items():
        typer.echo(f"  skipped  {reason}: {count}")
    if report.stopped_reason:
        typer.echo(f"  STOPPED  {report.stopped_reason}")
    for failure in data.get("failures", []):
        typer.echo(f"  failed   bc={failure['bc_id']} outlook={failure['graph_id']}: "
                   f"{failure['reason']}")
    if report.dry_run:
        for action in report.planned_writes:
            typer.echo(f"  plan     {type(action).__name__} "
                       f"{getattr(action, 'bc_id', '') or getattr(action, 'graph_id', '')}")


def sync(
    user: str,
    full: Annotated[bool, typer.Option("--full", help="Full sync: everything, both ways")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, write nothing")
    ] = False,
    force: Annotated[bool, typer.Option(help="Override the mass-delete safety rail")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sync one user now, without Kafka: changes since the last sync, or everything (--full)."""
    from contactsync.engine.links import SyncMode
    from contactsync.sync.runner import sync_user
    from contactsync.sync.services import open_services, open_store

    settings = settings_and_logging()

    async def run() -> SyncReport:
        with open_store(settings) as store:
            setup = store.setups.require(user)
            async with open_services(settings, store) as services:
                return await sync_user(
                    setup, SyncMode.FULL if full else SyncMode.SYNC, graph=services.graph,
                    bc=services.bc, store=store, dry_run=dry_run, force=force,
                )

    with user_errors():
        report = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print(report)
    if report.failed or report.stopped_reason:
        raise typer.Exit(2)
