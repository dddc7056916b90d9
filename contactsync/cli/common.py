"""What every command shares: settings, logging, and turning known failures into one sentence.

Kept light: `contactsync.cli.main` imports every command module at start, so this module (and
the command modules) import the heavy parts (settings, store, clients, Kafka) where they are
used, not at the top; `contactsync --help` and each command then load only what they need.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from pydantic import ValidationError

if TYPE_CHECKING:
    from contactsync.settings import Settings
    from contactsync.store import Store


def settings_and_logging() -> Settings:
    from contactsync.logs import configure_logging
    from contactsync.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.otel_traces:  # the SDK loads only then
        from contactsync.tracing import TracingUnavailable, configure

        try:
            configure(True)
        except TracingUnavailable as exc:
            _fail(str(exc))
    return settings


def _validation_sentence(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid {where}: {first['msg']}"


def _known_failure(exc: Exception) -> str | None:
    """The one sentence for a known failure, or None for anything else (it propagates).

    The failure classes are imported here, when something failed, not at start: the modules
    that define them (the store, the clients, the local broker) are heavy to load."""
    from contactsync.clients.errors import ServiceError
    from contactsync.engine.bcfilter import FilterError
    from contactsync.kafka.local_broker import BrokerError  # loads no kafka-python
    from contactsync.store.records import StoreError
    from contactsync.sync.services import ConfigError

    if isinstance(exc, (BrokerError, StoreError, ConfigError, ServiceError)):
        return str(exc)
    if isinstance(exc, FilterError):
        return f"invalid filter: {exc}"
    if isinstance(exc, ValidationError):
        return _validation_sentence(exc)
    if isinstance(exc, OSError):  # a service that cannot be reached at all
        return f"cannot connect: {exc}"
    return None


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known failures end the command with one clear sentence and exit code 1, no traceback."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise  # typer's own exits and usage errors, as they are
    except Exception as exc:
        message = _known_failure(exc)
        if message is None:
            raise
        _fail(message)


def _fail(message: str) -> None:
    from contactsync.logs import redact_secrets

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


MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port", min=1, max=65535,
    help="Serve /healthz, /readyz and /metrics on this port (all interfaces)",
)]


@contextlib.contextmanager
def health_endpoint(port: int | None, settings: Settings, store: Store) -> Iterator[None]:
    """While the block runs: the readiness checks of the broker and the store registered and,
    with a port, /healthz, /readyz and /metrics served on it."""
    from contactsync.health import READINESS, register_role_checks, serve_health
    from contactsync.kafka.local_broker import BrokerError

    try:
        from contactsync.kafka.io import resolve_bootstrap

        bootstrap: str | None = resolve_bootstrap(settings)
    except BrokerError:
        bootstrap = None  # the role says so itself, in one sentence
    register_role_checks(bootstrap, store)
    server = serve_health(port) if port is not None else None
    try:
        yield
    finally:
        if server is not None:
            server.stop()
        READINESS.clear()


def run_role(name: str, role: Callable[[Settings, Store, threading.Event], None],
             metrics_port: int | None = None) -> None:
    """Run one pipeline role in the foreground with the configured store until a signal."""
    from contactsync.store import Store

    settings = settings_and_logging()
    stop = stop_on_signals()
    with user_errors():
        store = Store.open(settings.database_url)
        try:
            with health_endpoint(metrics_port, settings, store):
                typer.echo(f"{name} running; Ctrl-C stops it")
                role(settings, store, stop)
        finally:
            store.close()
    typer.echo(f"{name} stopped")
