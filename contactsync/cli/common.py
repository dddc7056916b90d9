"""What every command shares: settings, logging, and turning known failures into one sentence.

Kept light: `contactsync.cli.main` imports every command module at start, so this module (and
the command modules) import the heavy parts (settings, store, clients, Kafka) where they are
used, not at the top; `contactsync --help` and each command then load only what they need.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup
from typer.exceptions import TyperException

if TYPE_CHECKING:
    from contactsync.settings import Settings
    from contactsync.store import Store


# Exit codes, the same for every command (README "Exit codes").
EXIT_ERROR = 1  # the command could not do its job; the one sentence says why
EXIT_USAGE = 2  # a bad command line (click's own)
EXIT_PARTIAL = 3  # it ran, but some contacts failed or a safety rail stopped a run

DEBUG_VARIABLE = "CONTACTSYNC_DEBUG"  # set: an unexpected error shows its traceback
RETRY_LOGGER = "contactsync.retries"  # the clients' "retry n of m" lines (resilience.py)
_LIBRARIES = ("kafka", "azure", "httpx", "httpcore", "uvicorn", "sqlalchemy")


def settings_and_logging(*, one_shot: bool = True) -> Settings:
    """Settings (a SettingsError names what to fix) and logging. A one-shot command (not a
    role) keeps libraries quiet, so its failure is one sentence, not a page of a library's
    connection errors, and prints the clients' retry lines as plain lines on stderr."""
    from contactsync.logs import configure_logging
    from contactsync.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if one_shot:
        for name in _LIBRARIES:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        from contactsync.credential_health import HEALTH

        HEALTH.log_failures = False  # a refused credential is the command's one sentence
        _plain_retry_lines()
    if settings.otel_traces:  # the SDK loads only then
        from contactsync.tracing import TracingUnavailable, configure

        try:
            configure(True)
        except TracingUnavailable as exc:
            _fail(str(exc))
    return settings


def _plain_retry_lines() -> None:
    from contactsync.logs import CurrentStderr, redact_text

    # The stderr of the moment, like every log line: a command run inside another (a test's
    # CliRunner, an embedding tool) closes its stderr afterwards.
    handler = logging.StreamHandler(CurrentStderr())
    handler.setFormatter(logging.Formatter("%(message)s"))

    def redact(record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), None
        return True

    handler.addFilter(redact)
    retries = logging.getLogger(RETRY_LOGGER)
    retries.handlers[:] = [handler]
    retries.propagate = False
    retries.setLevel(logging.INFO)


# Which setting points at each service: a connection failure names it.
_SERVICE_SETTINGS = {
    "bc": ("Business Central", "CONTACTSYNC_BC_BASE_URL", "bc_base_url"),
    "graph": ("Graph", "CONTACTSYNC_GRAPH_BASE_URL", "graph_base_url"),
    "kafka": ("Kafka", "KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
}


def _current_settings() -> Settings | None:
    from contactsync.settings import load_settings

    try:
        return load_settings()
    except Exception:
        return None


def _unreachable_sentence(service: str, detail: str, url: str = "",
                          state: str = "is not reachable") -> str | None:
    """'Business Central is not reachable at URL (ConnectError): check CONTACTSYNC_BC_BASE_URL
    and that the service is up', with the URL as configured."""
    if service not in _SERVICE_SETTINGS:
        return None
    label, variable, attribute = _SERVICE_SETTINGS[service]
    settings = _current_settings()
    configured = str(getattr(settings, attribute, "")) if settings is not None else ""
    where = configured or url or "(not set)"
    return f"{label} {state} at {where} ({detail}): check {variable} and that the service is up"


def _service_sentence(exc: Exception) -> str:
    from contactsync.clients.errors import (
        CredentialRejected,
        NotFound,
        ServiceUnavailable,
        Unauthorized,
    )

    service = getattr(exc, "service", "")
    if isinstance(exc, ServiceUnavailable) and exc.status is None:  # no HTTP answer at all
        detail = exc.args[0] if exc.args else type(exc).__name__
        state = "is not reachable" if exc.code == "NotSent" else "is not answering"
        sentence = _unreachable_sentence(service, str(detail), exc.url, state)
        if sentence:
            return sentence
    # CredentialRejected names its own fix (contactsync.credentials).
    if (isinstance(exc, Unauthorized) and not isinstance(exc, CredentialRejected)
            and "AZURE_" not in str(exc)):
        return (f"{exc}: check the Azure app's credentials (AZURE_TENANT_ID, AZURE_CLIENT_ID, "
                "AZURE_CLIENT_SECRET) and its permissions")
    if isinstance(exc, NotFound) and service == "graph" and "mailbox" not in str(exc).lower():
        return f"{exc}: check the mailbox and CONTACTSYNC_GRAPH_BASE_URL (up to /v1.0)"
    return str(exc)


def _store_sentence(exc: Exception) -> str | None:
    """A database URL that cannot be parsed or a database that cannot be reached."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    if not isinstance(exc, ArgumentError | NoSuchModuleError | DBAPIError):
        return None
    from contactsync.store.db import masked_url

    settings = _current_settings()
    url = masked_url(settings.database_url) if settings is not None else "(unreadable)"
    original = getattr(exc, "orig", None) or exc
    detail = (str(original).strip().splitlines() or [type(original).__name__])[0]
    return (f"cannot use the state store at {url} ({detail}): check CONTACTSYNC_DATABASE_URL "
            "and that the database is up")


def _kafka_sentence(exc: Exception) -> str | None:
    if "kafka.errors" not in sys.modules:  # kafka-python never loaded: not its failure
        return None
    from kafka.errors import KafkaError

    if not isinstance(exc, KafkaError):
        return None
    return _unreachable_sentence("kafka", type(exc).__name__)


def _known_failure(exc: Exception) -> str | None:
    """The one sentence for a known failure, or None for anything else.

    The failure classes are imported here, when something failed, not at start: the modules
    that define them (the store, the clients, Kafka) are heavy to load."""
    from contactsync.clients.errors import ServiceError
    from contactsync.engine.bcfilter import FilterError
    from contactsync.kafka.errors import BrokerError  # loads no kafka-python
    from contactsync.settings import SettingsError
    from contactsync.store.records import SetupNotFoundError, StoreError
    from contactsync.sync.services import ConfigError

    if isinstance(exc, SetupNotFoundError):  # the same words in every command
        return f"{exc}: `contactsync users list` shows the users set up"
    if isinstance(exc, ServiceError):
        return _service_sentence(exc)
    if isinstance(exc, (BrokerError, StoreError, ConfigError, SettingsError)):
        return str(exc)
    if isinstance(exc, FilterError):
        return f"invalid filter: {exc}"
    if isinstance(exc, ValidationError):
        return _validation_sentence(exc)
    found = _store_sentence(exc) or _kafka_sentence(exc)
    if found:
        return found
    if isinstance(exc, ConnectionError):  # a service that cannot be reached at all
        return f"cannot connect: {exc}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}: {exc.filename or exc}"
    return None


def _validation_sentence(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"invalid {where}: {first['msg']}"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Failures end the command with one sentence and exit code 1, never a traceback.

    An unexpected failure (a bug) says so in one line; CONTACTSYNC_DEBUG=1 shows its traceback.
    A reader that closed the pipe (`... | head`) is not a failure of ours: click ends quietly."""
    try:
        yield
    except (typer.Exit, typer.Abort, TyperException):
        raise  # typer's own exits and usage errors (exit code 2), as they are
    except BrokenPipeError:
        raise  # click's standalone mode silences it
    except Exception as exc:
        message = _known_failure(exc)
        if message is None:
            if os.environ.get(DEBUG_VARIABLE):
                raise
            message = (f"unexpected {type(exc).__name__}: {exc} (a bug: run again with "
                       f"{DEBUG_VARIABLE}=1 to see where, and report it)")
        _fail(message)


class ErrorFrame(TyperGroup):
    """The root command group: whatever any command raises goes through `user_errors`, so
    every command fails the same way (one sentence, exit code 1) without wrapping itself."""

    def invoke(self, ctx: Any) -> Any:
        with user_errors():
            return super().invoke(ctx)


def _fail(message: str) -> None:
    from contactsync.logs import redact_secrets

    # The sentence can quote a service's answer or a header: tokens never reach the terminal
    # (or a container's log). The mailbox the admin typed stays readable: it is their input.
    typer.secho(f"error: {redact_secrets(message)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(EXIT_ERROR) from None


def kafka_bootstrap(settings: Settings, timeout: float = 5.0) -> str:
    """The bootstrap servers, checked by opening a TCP connection to one of them: a broker
    that is not there fails in seconds, in one sentence, instead of after kafka-python's
    half-minute of reconnect attempts."""
    from contactsync.kafka.io import resolve_bootstrap

    bootstrap = resolve_bootstrap(settings)
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)),
                                          timeout=timeout):
                return bootstrap
        except (OSError, ValueError):
            continue
    from contactsync.kafka.errors import BrokerError

    sentence = _unreachable_sentence("kafka", "no broker answers", bootstrap)
    raise BrokerError(sentence or f"Kafka is not reachable at {bootstrap}")


SANDBOX_EXTRA = "pip install 'contactsync[sandbox]'"


def load_sandbox_tooling(command: str) -> None:
    """The emulators and the local broker are development tooling: what they need beyond the
    product is the optional `sandbox` extra. Without it, `contactsync <command>` says so in one
    sentence instead of failing on an import deep inside an emulator."""
    import importlib

    missing = []
    for module in _extra_modules("sandbox"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        from contactsync.sync.services import ConfigError

        raise ConfigError(f"`contactsync {command}` needs the development tooling "
                          f"({', '.join(missing)} is not installed): {SANDBOX_EXTRA}")


def _extra_modules(extra: str) -> list[str]:
    """The modules of the distributions an extra of the installed contactsync requires."""
    import re
    from importlib import metadata

    try:
        requires = metadata.requires("contactsync") or []
    except metadata.PackageNotFoundError:  # run from a checkout without installing it
        return []
    marker = re.compile(rf"""extra\s*==\s*["']{extra}["']""")
    names = (re.match(r"[A-Za-z0-9._-]+", r) for r in requires if marker.search(r))
    return [name.group(0).lower().replace("-", "_") for name in names if name]


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
    from contactsync.kafka.errors import BrokerError

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

    settings = settings_and_logging(one_shot=False)
    stop = stop_on_signals()
    with user_errors():
        store = Store.open(settings.database_url)
        try:
            with health_endpoint(metrics_port, settings, store):
                from contactsync.kafka.topics import ALL_TOPICS, await_topics

                await_topics(settings, ALL_TOPICS)  # no NotLeaderForPartition on a normal start
                typer.echo(f"{name} running; Ctrl-C stops it")
                role(settings, store, stop)
        finally:
            store.close()
    typer.echo(f"{name} stopped")
