"""A world for sync tests: both emulators on loopback, a store, clients, one user's setup."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient, GraphClientOptions
from contactsync.clients.resilience import RetryPolicy
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.engine.links import SyncMode
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.sync.runner import Sessions, SyncReport, sync_user

MAILBOX = "user1@contoso.test"


@dataclass
class World:
    emulators: RunningEmulators
    store: Store
    graph: GraphClient
    bc: BcClient
    # What a long-lived caller (the applier) keeps between a user's runs; tests that want
    # that pass it to apply_changes too.
    sessions: Sessions = field(default_factory=Sessions)

    def setup(self, **changes: Any) -> UserSetup:
        setup = self.store.setups.get(MAILBOX)
        if setup is None:
            setup = self.store.setups.add(UserSetup(user_id=MAILBOX, mailbox=MAILBOX, **changes))
        elif changes:
            setup = self.store.setups.update(MAILBOX, **changes)
        return setup

    async def sync(self, mode: SyncMode = SyncMode.SYNC, **kw: Any) -> SyncReport:
        return await sync_user(self.setup(), mode, graph=self.graph, bc=self.bc,
                               store=self.store, sessions=self.sessions, **kw)

    async def folder(self) -> list[dict[str, Any]]:
        """The user's Business Central folder, as the emulator holds it (tags under `_ext`)."""
        for folder in await self.graph.list_folders(MAILBOX):
            if folder["displayName"] == "Business Central":
                return self.emulators.graph.contacts(MAILBOX, str(folder["id"]))
        return []

    def bc_persons(self) -> list[dict[str, Any]]:
        return [c for c in self.emulators.bc.contacts() if c["type"] == "Person"]

    def writes(self) -> int:
        """Writes the product made to both services (the emulators' counters)."""
        total = 0
        for snap in (self.emulators.graph.counters_snapshot(),
                     self.emulators.bc.counters_snapshot()):
            total += sum(r["count"] for r in snap["by_route"]
                         if r["method"] in ("POST", "PATCH", "DELETE"))
        return total


@pytest.fixture
def emulators() -> Iterator[RunningEmulators]:
    running = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                              bc_config=BcEmulatorConfig.for_tests())
    running.graph.add_user(MAILBOX)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def world(emulators: RunningEmulators, tmp_path: Path) -> AsyncIterator[World]:
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    graph = GraphClient.create(emulators.graph_base_url,
                               options=GraphClientOptions(policy=RetryPolicy.fast()))
    bc = await BcClient.create(emulators.bc_base_url, emulators.bc.company_id,
                               policy=RetryPolicy.fast())
    try:
        yield World(emulators, store, graph, bc)
    finally:
        await bc.aclose()
        await graph.close()
        store.close()
