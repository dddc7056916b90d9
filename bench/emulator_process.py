"""The emulators in a child process, driven through a pipe, so that the benchmark's own peak
memory is the product's alone (the emulators hold every contact of both sides)."""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

# The emulators load in the child only: a benchmark's own process (whose memory is measured)
# carries the product's modules, not the emulators'.
if TYPE_CHECKING:
    from contactsync.emulators.running import RunningEmulators

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


class _Watcher:
    """Records when each `tok-...` job title first lands at each place (BC, or a user's
    folder): the end-to-end latency of a change, measured where its write lands. It listens
    to the emulators' own change hooks (called in the write itself), so the times are exact,
    not a polling period's worth late."""

    def __init__(self, running: RunningEmulators, mailboxes: list[str]) -> None:
        self.running, self.mailboxes = running, set(mailboxes)
        self.seen: dict[tuple[str, str], float] = {}
        graph, bc = running.graph.state, running.bc.state
        self._upns = {u.id: u.user_principal_name for u in graph.users.values()}
        graph.listeners.append(self._on_graph)
        bc.listeners.append(self._on_bc)

    def _on_graph(self, change: Any) -> None:
        now = time.time()
        state = self.running.graph.state
        contact = state.contacts.get(change.contact_id)
        folder = state.folders.get(change.folder_id)
        mailbox = self._upns.get(change.user_id, "")
        if contact is None or folder is None or folder.display_name != "Business Central":
            return
        if mailbox in self.mailboxes:
            self._note(mailbox, contact.data.get("jobTitle"), now)

    def _on_bc(self, company_id: str, contact_id: str, change: str, ms: int) -> None:
        now = time.time()
        stored = self.running.bc.state.company(company_id).contacts.get(contact_id)
        if stored is not None:
            self._note("bc", stored.data.get("jobTitle"), now)

    def _note(self, place: str, title: Any, now: float) -> None:
        if isinstance(title, str) and title.startswith("tok-"):
            self.seen.setdefault((place, title), now)

    def close(self) -> None:
        graph_hooks, bc_hooks = self.running.graph.state.listeners, self.running.bc.state.listeners
        if self._on_graph in graph_hooks:
            graph_hooks.remove(self._on_graph)
        if self._on_bc in bc_hooks:
            bc_hooks.remove(self._on_bc)


def _folder(running: RunningEmulators, mailbox: str) -> list[dict[str, Any]]:
    state = running.graph.state
    for folder in state.child_folders(state.user(mailbox)):
        if folder.display_name == "Business Central":
            return running.graph.contacts(mailbox, str(folder.id))
    return []


def _serve(conn: Connection, fast: bool, mailboxes: list[str]) -> None:
    from contactsync.emulators.bc import BcEmulatorConfig
    from contactsync.emulators.bc import SeedSpec as BcSeed
    from contactsync.emulators.graph import GraphEmulatorConfig
    from contactsync.emulators.running import start_emulators

    graph_config = (GraphEmulatorConfig.fast(**UNTHROTTLED_GRAPH) if fast
                    else GraphEmulatorConfig(allow_http_notifications=True, **UNTHROTTLED_GRAPH))
    bc_config = (BcEmulatorConfig.for_tests(**UNTHROTTLED_BC) if fast
                 else BcEmulatorConfig(**UNTHROTTLED_BC))
    running = start_emulators(graph_config=graph_config, bc_config=bc_config)
    for mailbox in mailboxes:
        running.graph.add_user(mailbox)
    watcher: _Watcher | None = None
    conn.send({"graph": running.graph_base_url, "bc": running.bc_base_url,
               "company": running.bc.company_id})
    while True:
        command, arg = conn.recv()
        result: Any = None
        if command == "seed":
            running.bc.seed(BcSeed(persons=int(arg), companies=0, random_seed=1))
        elif command == "counts":
            result = _counts(running)
        elif command == "statuses":  # status code -> answers, both services
            result = {}
            for snap in (running.graph.counters_snapshot(), running.bc.counters_snapshot()):
                for status, n in snap["by_status"].items():
                    result[status] = result.get(status, 0) + n
        elif command == "reset_counts":
            running.graph.reset_counters()
            running.bc.reset_counters()
        elif command == "edit":
            result = _edit(running, float(arg))
        elif command == "bc_people":
            result = [(c["id"], c["email"], c["city"], c["country"])
                      for c in running.bc.contacts()
                      if c["type"] == "Person" and c["email"]]
        elif command == "folder":  # mailbox -> {email: Outlook contact id}
            result = {(c.get("emailAddresses") or [{}])[0].get("address", ""): c["id"]
                      for c in _folder(running, str(arg))}
        elif command == "bc_edit":  # returns when the edit happened (the latency's start)
            running.bc.update_contact(arg[0], arg[1])
            result = time.time()
        elif command == "outlook_edit":
            running.graph.person_update_contact(arg[0], arg[1], arg[2])
            result = time.time()
        elif command == "watch":
            watcher = _Watcher(running, mailboxes)
        elif command == "seen":
            result = dict(watcher.seen) if watcher else {}
        elif command == "stop":
            if watcher is not None:
                watcher.close()
            running.stop()
            conn.send(None)
            return
        conn.send(result)


class EmulatorProcess:
    def __init__(self, *, fast: bool = False, mailboxes: tuple[str, ...] = (MAILBOX,)) -> None:
        """`fast`: the emulators' test timings (notifications within milliseconds)."""
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, fast, list(mailboxes)),
                                 daemon=True)
        self._proc.start()
        self.urls: dict[str, str] = self._conn.recv()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def call(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        return self._conn.recv()

    def stop(self) -> None:
        self.call("stop")
        self._proc.join(timeout=10)
