"""`contactsync router` and `contactsync applier`: one pipeline role each, in the foreground.

Both run until SIGINT (Ctrl-C) or SIGTERM, then finish the group in hand, commit what is done
and close. Kafka and the state store come from the settings; the applier also needs the tenant
(CONTACTSYNC_GRAPH_BASE_URL, CONTACTSYNC_BC_BASE_URL, CONTACTSYNC_BC_COMPANY).
"""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from contactsync.cli.common import settings_and_logging, user_errors
from contactsync.store import Store


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def router(
    refresh: Annotated[float, typer.Option(
        "--refresh", min=0.0, help="Seconds between re-reads of the enabled setups and filters"
    )] = 5.0,
) -> None:
    """Route BC contact changes and Graph notifications to per-user sync commands."""
    settings = settings_and_logging()
    from consumers.router import Router  # not loaded for every other command

    stop = _stop_on_signals()
    with user_errors():
        store = Store.open(settings.database_url)
        try:
            typer.echo("router running; Ctrl-C stops it")
            Router(settings, store, refresh_seconds=refresh).run(stop)
        finally:
            store.close()
    typer.echo("router stopped")


def applier() -> None:
    """Apply per-user sync commands to Outlook and Business Central and publish the results."""
    settings = settings_and_logging()
    from consumers.applier import Applier  # not loaded for every other command

    stop = _stop_on_signals()
    with user_errors():
        store = Store.open(settings.database_url)
        try:
            typer.echo("applier running; Ctrl-C stops it")
            Applier(settings, store).run(stop)
        finally:
            store.close()
    typer.echo("applier stopped")
