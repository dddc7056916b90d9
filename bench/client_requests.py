"""CPU the product spends per Graph request, client side only (the emulators run in a process of
their own): a near-real-time change costs one write and sometimes one read, so this is the floor
under pipeline_load's CPU per change that the HTTP client sets.

GET and PATCH of one contact, one request at a time and eight at once (as the applier sends a
poll's writes); CPU time of this process per request, the median of BENCH_REPEAT rounds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from bench.emulator_process import MAILBOX, EmulatorProcess
from contactsync.clients.graph import GraphClient

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
# The client paces a mailbox at Graph's 10,000 requests per 10 minutes (GRAPH_MAILBOX_LIMITS):
# a run over it would wait for the window, measuring nothing. One warm-up round, then REPEAT
# rounds of GET and PATCH one at a time and eight at a time.
MAILBOX_BUDGET = 10_000


def planned_requests() -> int:
    return 2 * REQUESTS * (1 + 2 * REPEAT)


async def _measure(graph: GraphClient, contacts: list[str], parallel: int,
                   repeat: int = REPEAT) -> dict[str, float]:
    out: dict[str, list[float]] = {"GET": [], "PATCH": []}
    for n in range(repeat):
        for method in out:
            async def one(i: int, method: str = method, n: int = n) -> None:
                cid = contacts[i % len(contacts)]
                if method == "GET":
                    await graph.get_contact(MAILBOX, cid)
                else:
                    await graph.update_contact(MAILBOX, cid, {"jobTitle": f"t{n}-{i}"})

            started = time.process_time()
            for start in range(0, REQUESTS, parallel):
                await asyncio.gather(*(one(i) for i in range(start, start + parallel)))
            out[method].append((time.process_time() - started) * 1000 / REQUESTS)
    return {method: statistics.median(values) for method, values in out.items()}


async def _run(emu: EmulatorProcess) -> None:
    graph = GraphClient.create(emu.urls["graph"])
    try:
        folder = await graph.find_or_create_folder(MAILBOX)
        created = await graph.create_contacts(MAILBOX, folder, [
            (f"bench-{i}", {"givenName": f"P{i}", "displayName": f"P{i}"}) for i in range(50)])
        contacts = [str(r.contact["id"]) for r in created if r.contact]
        await _measure(graph, contacts, 1, repeat=1)  # warm: connections, caches
        for parallel in (1, 8):
            ms = await _measure(graph, contacts, parallel)
            print(f"  {parallel} at a time: " + ", ".join(
                f"{method} {value:.3f} ms CPU" for method, value in ms.items())
                + f" per request (median of {REPEAT} x {REQUESTS})")
    finally:
        await graph.close()


def main() -> None:
    if planned_requests() + 50 > MAILBOX_BUDGET:
        print(f"client_requests: {planned_requests()} requests would exceed the client's "
              f"{MAILBOX_BUDGET} per 10 minutes for one mailbox and wait for the window; "
              "lower BENCH_REQUESTS or BENCH_REPEAT")
        return
    emu = EmulatorProcess(fast=True)
    try:
        print(f"client_requests: Graph client CPU per request, load average "
              f"{os.getloadavg()[0]:.1f}")
        asyncio.run(_run(emu))
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
