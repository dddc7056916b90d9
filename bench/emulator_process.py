"""The emulators in a child process, driven through a pipe, so that the benchmark's own peak
memory is the product's alone (the emulators hold every contact of both sides)."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection
from typing import Any

from contactsync.cli.emulate_cmd import RunningEmulators, start_emulators
from emulators.bc import BcEmulatorConfig
from emulators.bc import SeedSpec as BcSeed
from emulators.graph import GraphEmulatorConfig

MAILBOX = "bench@contoso.test"
# Graph's per-mailbox request budget would stretch a 100,000-contact load over hours; the
# benchmark measures our overhead against the same requests, so the budgets are lifted.
UNTHROTTLED_GRAPH = {"mailbox_max_requests": 10**9}
UNTHROTTLED_BC = {"max_requests": 10**9}


def _counts(running: RunningEmulators) -> dict[str, int]:
    counts: dict[str, int] = {}
    for service, snap in (("graph", running.graph.counters_snapshot()),
                          ("bc", running.bc.counters_snapshot())):
        for row in snap["by_route"]:
            key = f"{service} {row['method']} {row['route']}"
            counts[key] = counts.get(key, 0) + int(row["count"])
    return counts


def _edit(running: RunningEmulators, share: float) -> dict[str, int]:
    """Change `share` of the contacts on each side, as people would (different contacts)."""
    bc_people = [c for c in running.bc.contacts() if c["type"] == "Person"]
    step = max(1, round(1 / share))
    for contact in bc_people[::step]:
        running.bc.update_contact(contact["id"], {"jobTitle": "Changed in BC"})
    state = running.graph.state
    folders = state.child_folders(state.user(MAILBOX))
    folder_id = next(str(f.id) for f in folders if f.display_name == "Business Central")
    outlook = running.graph.contacts(MAILBOX, folder_id)[step // 2 :: step]
    for contact in outlook:
        running.graph.person_update_contact(MAILBOX, contact["id"],
                                            {"jobTitle": "Changed in Outlook"})
    return {"bc": len(bc_people[::step]), "outlook": len(outlook)}


def _serve(conn: Connection) -> None:
    running = start_emulators(
        graph_config=GraphEmulatorConfig(**UNTHROTTLED_GRAPH),
        bc_config=BcEmulatorConfig(**UNTHROTTLED_BC),
    )
    running.graph.add_user(MAILBOX)
    conn.send({"graph": running.graph_base_url, "bc": running.bc_base_url,
               "company": running.bc.company_id})
    while True:
        command, arg = conn.recv()
        result: Any = None
        if command == "seed":
            running.bc.seed(BcSeed(persons=int(arg), companies=0, random_seed=1))
        elif command == "counts":
            result = _counts(running)
        elif command == "reset_counts":
            running.graph.reset_counters()
            running.bc.reset_counters()
        elif command == "edit":
            result = _edit(running, float(arg))
        elif command == "stop":
            running.stop()
            conn.send(None)
            return
        conn.send(result)


class EmulatorProcess:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        self.urls: dict[str, str] = self._conn.recv()

    def call(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        return self._conn.recv()

    def stop(self) -> None:
        self.call("stop")
        self._proc.join(timeout=10)
