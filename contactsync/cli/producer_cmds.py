"""`contactsync bc-changes` and `contactsync subscriptions`: one producer role each, in the
foreground, until SIGINT (Ctrl-C) or SIGTERM.

- `bc-changes` reads BC hints from `bc.notifications` and polls on a timer, and publishes the
  changed contacts' snapshots to `bc.contact.changes` (producers/bc_changes.py). It needs
  CONTACTSYNC_BC_BASE_URL and CONTACTSYNC_BC_COMPANY.
- `subscriptions` keeps one Graph subscription per enabled user and one BC subscription per
  company alive and acts on Graph lifecycle events (producers/subscriptions.py). It needs the
  tenant and CONTACTSYNC_WEBHOOK_PUBLIC_URL, where the webhook answers. Run one per deployment.
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


def bc_changes(
    poll_interval: Annotated[float, typer.Option(
        "--poll-interval", min=0.1, help="Seconds between timer rounds while BC sends webhooks"
    )] = 30.0,
    fallback_poll_interval: Annotated[float, typer.Option(
        "--fallback-poll-interval", min=0.1,
        help="Seconds between timer rounds when BC offers no webhooks on contacts",
    )] = 5.0,
) -> None:
    """Publish BC contact changes (hints and polling, one query per round) to Kafka."""
    settings = settings_and_logging()
    from producers.bc_changes import run_bc_changes  # not loaded for every other command

    stop = _stop_on_signals()
    with user_errors():
        store = Store.open(settings.database_url)
        try:
            typer.echo("bc-changes running; Ctrl-C stops it")
            run_bc_changes(settings, store, stop, poll_interval=poll_interval,
                           fallback_poll_interval=fallback_poll_interval)
        finally:
            store.close()
    typer.echo("bc-changes stopped")


def subscriptions(
    interval: Annotated[float, typer.Option(
        "--interval", min=1.0, help="Seconds between passes over the users' subscriptions"
    )] = 300.0,
) -> None:
    """Keep the Graph and BC webhook subscriptions alive (create, renew, recreate, delete)."""
    settings = settings_and_logging()
    from producers.subscriptions import run_subscriptions  # not loaded for every other command

    stop = _stop_on_signals()
    with user_errors():
        store = Store.open(settings.database_url)
        try:
            typer.echo("subscriptions running; Ctrl-C stops it")
            run_subscriptions(settings, store, stop, interval=interval)
        finally:
            store.close()
    typer.echo("subscriptions stopped")
