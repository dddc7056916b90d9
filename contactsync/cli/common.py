"""What every command shares: settings, logging, and turning known failures into one sentence."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from contactsync.kafka.local_broker import BrokerError
from contactsync.logs import configure_logging
from contactsync.settings import Settings, load_settings


def settings_and_logging() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known failures end the command with one clear sentence and exit code 1, no traceback."""
    try:
        yield
    except BrokerError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
