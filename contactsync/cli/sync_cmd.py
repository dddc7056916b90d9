"""`contactsync sync USER [--full] [--dry-run]`: BC's "Sync" and "Full sync", inline."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from contactsync.cli.common import settings_and_logging
from contactsync.cli.report_view import show_run

if TYPE_CHECKING:  # the sync, the store and the clients load when the command runs
    from contactsync.sync.runner import SyncReport


def sync(
    user: str,
    full: Annotated[bool, typer.Option("--full", help="Full sync: everything, both ways")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, write nothing")
    ] = False,
    force: Annotated[bool, typer.Option(
        help="Override the mass-delete safety rail, and sync a disabled user")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON")] = False,
) -> None:
    """Sync one user now, without Kafka: changes since the last sync, or everything (--full).

    Exit code 3 when a contact failed or the mass-delete safety rail stopped the run."""
    from contactsync.engine.links import SyncMode
    from contactsync.sync.runner import sync_user
    from contactsync.sync.services import ConfigError, open_services, open_store

    settings = settings_and_logging()

    async def run() -> SyncReport:
        with open_store(settings) as store:
            setup = store.setups.require(user)
            if not setup.enabled and not force:  # as `reconcile` and the pipeline do
                raise ConfigError(f"sync is disabled for {user}: `contactsync users enable "
                                  f"{user}` first, or run this once with --force")
            async with open_services(settings, store) as services:
                return await sync_user(
                    setup, SyncMode.FULL if full else SyncMode.SYNC, graph=services.graph,
                    bc=services.bc, store=store, dry_run=dry_run, force=force,
                )

    report = asyncio.run(run())
    show_run("full_sync" if full else "sync", [report.line()],
             dry_run=dry_run, as_json=as_json)
