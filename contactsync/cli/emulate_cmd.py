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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

# The emulators (FastAPI/Starlette, uvicorn) load when they start, not at CLI start.
if TYPE_CHECKING:
    from contactsync.emulators.bc import BcEmulator, BcEmulatorConfig
    from contactsync.emulators.common.server import BackgroundServer
    from contactsync.emulators.graph import GraphEmulator, GraphEmulatorConfig


@dataclass
class RunningEmulators:
    graph: GraphEmulator
    bc: BcEmulator
    graph_server: BackgroundServer
    bc_server: BackgroundServer

    @property
    def graph_base_url(self) -> str:
        return f"{self.graph_server.url}/v1.0"

    @property
    def bc_base_url(self) -> str:
        return f"{self.bc_server.url}/v2.0/{self.bc.config.environment}/api/v2.0"

    def stop(self) -> None:
        self.graph_server.stop()
        self.bc_server.stop()


def start_emulators(
    host: str = "127.0.0.1",
    graph_port: int = 0,
    bc_port: int = 0,
    graph_config: GraphEmulatorConfig | None = None,
    bc_config: BcEmulatorConfig | None = None,
) -> RunningEmulators:
    from contactsync.emulators.bc import BcEmulator
    from contactsync.emulators.common.server import BackgroundServer
    from contactsync.emulators.graph import GraphEmulator

    graph = GraphEmulator(graph_config)
    bc = BcEmulator(bc_config)
    graph_server = BackgroundServer(graph.app, host=host, port=graph_port).start()
    bc_server = BackgroundServer(bc.app, host=host, port=bc_port).start()
    return RunningEmulators(graph, bc, graph_server, bc_server)


def seed_emulators(running: RunningEmulators, seed: str) -> str:
    from contactsync.emulators.bc import SeedSpec as BcSeed

    if seed.isdigit():
        persons = int(seed)
        running.bc.seed(BcSeed(persons=persons, companies=max(1, persons // 20),
                               without_email=max(0, persons // 50),
                               duplicate_emails=max(0, persons // 100),
                               privacy_blocked=max(0, persons // 100)))
        running.graph.seed(users=3, contacts_per_user=min(25, persons))
        return f"seeded BC with {persons} persons and Graph with 3 mailboxes"
    path = Path(seed)
    if not path.exists():
        raise typer.BadParameter(f"{seed} is neither a number nor an existing snapshot file")
    target = running.graph if "graph" in path.name.lower() else running.bc
    target.load_snapshot(str(path))
    return f"loaded {path} into the {'Graph' if target is running.graph else 'BC'} emulator"


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
    from contactsync.emulators.graph import GraphEmulatorConfig

    for option, port in (("--graph-port", graph_port), ("--bc-port", bc_port)):
        _require_free(host, port, option)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    running = start_emulators(host, graph_port, bc_port, graph_config=GraphEmulatorConfig(
        allow_http_notifications=allow_http_notifications))
    try:
        if seed:
            typer.echo(seed_emulators(running, seed))
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
