"""One pipeline role per command, in the foreground, for scale-out (`contactsync run` runs
them all in one process). Each runs until SIGINT (Ctrl-C) or SIGTERM, finishes what it holds,
commits what is done and closes. Role modules load only when their command runs."""

from __future__ import annotations

from typing import Annotated

import typer

from contactsync.cli.common import MetricsPort, run_role


def router(
    refresh: Annotated[float, typer.Option(
        "--refresh", min=0.0, help="Seconds between re-reads of the enabled setups and filters"
    )] = 5.0,
    metrics_port: MetricsPort = None,
) -> None:
    """Route BC contact changes and Graph notifications to per-user sync commands."""
    from contactsync.consumers.router import Router

    run_role("router", lambda settings, store, stop: Router(
        settings, store, refresh_seconds=refresh).run(stop), metrics_port)


def applier(metrics_port: MetricsPort = None) -> None:
    """Apply per-user sync commands to Outlook and Business Central and publish the results."""
    from contactsync.consumers.applier import Applier

    run_role("applier", lambda settings, store, stop: Applier(settings, store).run(stop),
             metrics_port)


def bc_changes(
    poll_interval: Annotated[float | None, typer.Option(
        "--poll-interval", min=0.1, help="Seconds between timer rounds while BC sends webhooks "
        "(default: CONTACTSYNC_BC_POLL_SECONDS, 30)"
    )] = None,
    fallback_poll_interval: Annotated[float, typer.Option(
        "--fallback-poll-interval", min=0.1,
        help="Seconds between timer rounds when BC offers no webhooks on contacts",
    )] = 5.0,
    metrics_port: MetricsPort = None,
) -> None:
    """Publish BC contact changes (hints and polling, one query per round) to Kafka."""
    from contactsync.producers.bc_changes import run_bc_changes

    run_role("bc-changes", lambda settings, store, stop: run_bc_changes(
        settings, store, stop, poll_interval=poll_interval,
        fallback_poll_interval=fallback_poll_interval), metrics_port)


def subscriptions(
    interval: Annotated[float, typer.Option(
        "--interval", min=1.0, help="Seconds between passes over the users' subscriptions"
    )] = 300.0,
    metrics_port: MetricsPort = None,
) -> None:
    """Keep the Graph and BC webhook subscriptions alive (create, renew, recreate, delete)."""
    from contactsync.producers.subscriptions import run_subscriptions

    run_role("subscriptions", lambda settings, store, stop: run_subscriptions(
        settings, store, stop, interval=interval), metrics_port)
