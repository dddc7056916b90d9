"""`contactsync sandbox`: the README's main job, everything on this machine.

It starts the local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS names one), creates the topics,
and runs until Ctrl-C, then stops what it started.
"""

from __future__ import annotations

import signal
import threading

import typer

from contactsync.cli.common import settings_and_logging, user_errors
from contactsync.kafka.io import local_broker
from contactsync.kafka.topics import ensure_topics_at


def sandbox() -> None:
    """Run the whole pipeline locally (against the emulators when no tenant is configured)."""
    settings = settings_and_logging()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker = None
    with user_errors():
        if settings.kafka_bootstrap_servers:
            bootstrap = settings.kafka_bootstrap_servers
        else:
            broker = local_broker(settings)
            typer.echo("starting the local Kafka broker ...")
            bootstrap = broker.up()
        ensure_topics_at(bootstrap, settings)
    typer.echo(f"kafka: {bootstrap}")
    typer.echo("sandbox running; Ctrl-C stops it")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if broker is not None:
            broker.down()
        typer.echo("stopped")
