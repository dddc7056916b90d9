"""One user's inline reconcile (as `contactsync reconcile --inline`) in a process of its own,
returning its figures: wall time, status, writes, and the process's RSS before the reconcile
(after its imports) and its peak.

The process is spawned, so it imports this module and nothing of bench/reconcile.py (the local
broker, producers.reconcile and kafka-python, the emulator process): its memory is what the
reconcile itself costs, plus the modules the real command loads. Keep the imports below to that.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import time
from typing import Any

# The `contactsync` command imports contactsync.cli.main (every command module, each of which
# loads its heavy parts only when it runs): import it too, so this process carries what the
# real `reconcile --inline` process carries.
import contactsync.cli.main  # noqa: F401
from bench.rss import high_water_mb
from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient, GraphClientOptions
from contactsync.clients.resilience import BudgetLimits
from contactsync.store import Store
from contactsync.sync.reconcile import reconcile_user
from contactsync.sync.run_ids import new_run_id


def _rss_mb() -> float:
    """This process's peak RSS so far, in MB (ru_maxrss only where /proc has no VmHWM)."""
    peak = high_water_mb()
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(urls: dict[str, str], db_url: str, user_id: str, out: Any) -> None:
    baseline = _rss_mb()  # the imports alone, before any work

    async def run() -> dict[str, Any]:
        # Request budgets lifted as in bench/sync_full.py (see bench/reconcile.py).
        graph = GraphClient.create(urls["graph"], options=GraphClientOptions(
            limits=BudgetLimits(4, 10**9, 600.0)))
        bc = await BcClient.create(urls["bc"], urls["company"],
                                   limits=BudgetLimits(5, 10**9, 300.0))
        with Store.open(db_url) as store:
            started = time.perf_counter()
            line = await reconcile_user(store.setups.require(user_id), graph=graph, bc=bc,
                                        store=store, run_id=new_run_id("bench"))
            wall = time.perf_counter() - started
        await graph.close()
        await bc.aclose()
        return {"wall": wall, "baseline": baseline, "peak": _rss_mb(), "status": line.status,
                "writes": line.writes}

    out.put(asyncio.run(run()))


def reconcile_in_child(urls: dict[str, str], db_url: str, user_id: str) -> dict[str, Any]:
    """Run one user's reconcile in a fresh spawned process; its figures as a dict."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(urls, db_url, user_id, out))
    proc.start()
    result: dict[str, Any] = out.get()
    proc.join()
    return result
