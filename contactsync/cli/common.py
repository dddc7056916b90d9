"""What every command shares: settings, logging, and turning known failures into one sentence."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import typer
from pydantic import ValidationError

from contactsync.clients.errors import ServiceError
from contactsync.engine.bcfilter import FilterError
from contactsync.kafka.local_broker import BrokerError
from contactsync.logs import configure_logging, redact_secrets
from contactsync.settings import Settings, load_settings
from contactsync.store import Store
from contactsync.store.records import StoreError
from contactsync.sync.services import ConfigError


def settings_and_logging() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _validation_sentence(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid {where}: {first['msg']}"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known failures end the command with one clear sentence and exit code 1, no traceback."""
    try:
        yield
    except (BrokerError, StoreError, ConfigError, ServiceError) as exc:
        _fail(str(exc))
    except FilterError as exc:
        _fail(f"invalid filter: {exc}")
    except ValidationError as exc:
        _fail(_validation_sentence(exc))
    except OSError as exc:  # a service that cannot be reached at all
        _fail(f"cannot connect: {exc}")


def _fail(message: str) -> None:
    # The sentence can quote a service's answer or a header: tokens never reach the terminal
    # (or a container's log). The mailbox the admin typed stays readable: it is their input.
    typer.secho(f"error: {redact_secrets(message)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1) from None


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C (SIGINT) or SIGTERM: roles finish what they hold, then stop."""
    stop = threading.Event()

    def handler(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def run_role(name: str, role: Callable[[Settings, Store, threading.Event], None]) -> None:
    """Run one pipeline role in the foreground with the configured store until a signal."""
    settings = settings_and_logging()
    stop = stop_on_signals()
    with user_errors():
        store = Store.open(settings.database_url)
        try:
            typer.echo(f"{name} running; Ctrl-C stops it")
            role(settings, store, stop)
        finally:
            store.close()
    typer.echo(f"{name} stopped")
