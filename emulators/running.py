"""Both emulators (Graph and Business Central) served on loopback ports, for `contactsync
emulate`, the sandbox, the tests and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contactsync.emulators.bc import BcEmulator, BcEmulatorConfig
from contactsync.emulators.bc import SeedSpec as BcSeed
from contactsync.emulators.graph import GraphEmulator, GraphEmulatorConfig
from contactsync.http_server import BackgroundServer


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
    graph = GraphEmulator(graph_config)
    bc = BcEmulator(bc_config)
    graph_server = BackgroundServer(graph.app, host=host, port=graph_port).start()
    bc_server = BackgroundServer(bc.app, host=host, port=bc_port).start()
    return RunningEmulators(graph, bc, graph_server, bc_server)


def seed_emulators(running: RunningEmulators, seed: str) -> str:
    """`seed`: a number of BC persons (plus companies, people without email, duplicates and
    privacy-blocked ones; Graph gets three mailboxes), or a snapshot file written by
    `POST /_emulator/snapshot/save` (a name containing "graph" goes to Graph, else to BC).
    Says what it did."""
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
        raise ValueError(f"{seed} is neither a number nor an existing snapshot file")
    target = running.graph if "graph" in path.name.lower() else running.bc
    target.load_snapshot(str(path))
    return f"loaded {path} into the {'Graph' if target is running.graph else 'BC'} emulator"
