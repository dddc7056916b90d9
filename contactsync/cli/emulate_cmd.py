"""`contactsync emulate`: run the Graph and Business Central emulators until Ctrl-C.

Prints the base URLs the product takes as CONTACTSYNC_GRAPH_BASE_URL (up to /v1.0) and
CONTACTSYNC_BC_BASE_URL (up to /api/v2.0). `--seed N` fills BC with N persons (plus companies,
people without email, duplicates and privacy-blocked ones) and Graph with three mailboxes;
`--seed FILE` loads a snapshot written by `POST /_emulator/snapshot/save` of either emulator
(a file whose name contains "graph" goes to Graph, else to BC).
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import Annotated

import typer

from contactsync.cli.common import load_sandbox_tooling


def _require_free(host: str, port: int, option: str) -> None:
    """A port in use is one sentence before uvicorn starts (and prints its own error)."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            from contactsync.sync.services import ConfigError

            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}): another "
                              f"program uses it; choose another {option}, or 0 for a free one"
                              ) from None


def emulate(
    graph_port: Annotated[int, typer.Option(help="0 = a free port")] = 0,
    bc_port: Annotated[int, typer.Option(help="0 = a free port")] = 0,
    host: str = "127.0.0.1",
    seed: Annotated[str | None, typer.Option(help="N persons, or a snapshot FILE")] = None,
    allow_http_notifications: Annotated[bool, typer.Option(
        help="let Graph subscriptions notify an http URL (real Graph requires https)")] = False,
) -> None:
    """Run the Graph and Business Central emulators and print their base URLs."""
    load_sandbox_tooling("emulate")  # the emulators (FastAPI/Starlette, uvicorn) load now
    from contactsync.emulators.graph import GraphEmulatorConfig
    from contactsync.emulators.running import seed_emulators, start_emulators

    for option, port in (("--graph-port", graph_port), ("--bc-port", bc_port)):
        _require_free(host, port, option)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    running = start_emulators(host, graph_port, bc_port, graph_config=GraphEmulatorConfig(
        allow_http_notifications=allow_http_notifications))
    try:
        if seed:
            try:
                typer.echo(seed_emulators(running, seed))
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        typer.echo(f"CONTACTSYNC_GRAPH_BASE_URL={running.graph_base_url}")
        typer.echo(f"CONTACTSYNC_BC_BASE_URL={running.bc_base_url}")
        typer.echo(f"CONTACTSYNC_BC_COMPANY={running.bc.company_id}")
        typer.echo("admin APIs under /_emulator on both; Ctrl-C stops them")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
