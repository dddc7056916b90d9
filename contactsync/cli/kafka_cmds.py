"""`contactsync kafka up|status|down` (the local broker) and `contactsync topics ensure`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from contactsync.cli.common import kafka_bootstrap, settings_and_logging, user_errors

# kafka-python (contactsync.kafka.io, .topics) loads when a command runs, not at CLI start.
if TYPE_CHECKING:
    from contactsync.kafka.local_broker import LocalBroker
    from contactsync.settings import Settings

kafka_app = typer.Typer(no_args_is_help=True, help="The local single-node Kafka broker (KRaft).")
topics_app = typer.Typer(no_args_is_help=True, help="The pipeline's topics.")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir",
                 help="Where the broker's files live (default: kafka/ in the state directory)"),
]


def _broker(settings: Settings, data_dir: Path | None) -> LocalBroker:
    from contactsync.kafka.local_broker import LocalBroker

    if data_dir is not None:
        settings = settings.model_copy(update={"kafka_data_dir": data_dir})
    return LocalBroker.for_settings(settings)


def _to_stderr(message: str) -> None:
    typer.echo(message, err=True)  # stdout stays the bootstrap address alone, for scripts


@kafka_app.command()
def up(data_dir: DataDir = None) -> None:
    """Fetch the broker jars (first time), start the broker, print its bootstrap address."""
    settings = settings_and_logging()
    with user_errors():
        typer.echo(_broker(settings, data_dir).up(progress=_to_stderr))


@kafka_app.command()
def status(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON")] = False,
) -> None:
    """Say whether the local broker runs, and where."""
    settings = settings_and_logging()
    state = _broker(settings, data_dir).status()
    if as_json:
        typer.echo(json.dumps({"running": state.running, "pid": state.pid,
                               "bootstrap": state.bootstrap, "data_dir": str(state.data_dir)}))
    elif state.running:
        typer.echo(f"running pid={state.pid} bootstrap={state.bootstrap} data={state.data_dir}")
    else:
        typer.echo(f"stopped data={state.data_dir}")
    if not state.running:
        raise typer.Exit(3)


@kafka_app.command()
def down(data_dir: DataDir = None) -> None:
    """Stop the local broker; no Java process is left behind."""
    settings = settings_and_logging()
    was_running = _broker(settings, data_dir).down()
    typer.echo("stopped" if was_running else "not running")


@topics_app.command()
def ensure() -> None:
    """Create the topics (partitions, replication, retention from settings); idempotent."""
    from contactsync.kafka.topics import ensure_topics_at

    settings = settings_and_logging()
    with user_errors():
        kafka_bootstrap(settings)  # no broker: one sentence, in seconds
        report = ensure_topics_at(settings, settings)
    for name in report.created:
        typer.echo(f"created  {name}")
    for name in report.existing:
        note = " (retention updated)" if name in report.retention_updated else ""
        typer.echo(f"exists   {name}{note}")
