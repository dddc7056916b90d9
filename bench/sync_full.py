"""Full sync of one user against the emulators (issue: the sync engine).

For N BC contacts (10,000 and 100,000; `BENCH_SIZES` overrides): a full sync into an empty
folder, again with no change, again after 1% of the contacts changed on each side. Prints wall
time, API requests by kind (the emulators' counters), writes, and peak RSS; and, in the same
run, the floor: a minimal plain-httpx script making the same requests. The emulators and the
floor run in child processes, so the RSS is the product's alone.

Peak RSS is given twice: "this run" is the run's own peak (Linux VmHWM, reset before the run
through /proc/self/clear_refs); it starts from the RSS the earlier runs left behind, so memory
a long-lived process (`contactsync run`) would keep between runs still counts. "Process
high-water" is ru_maxrss, the peak of every run so far in this process.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from typing import Any

import httpx

from bench.emulator_process import MAILBOX, EmulatorProcess
from bench.rss import high_water_mb, reset_high_water
from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient, GraphClientOptions
from contactsync.clients.resilience import BudgetLimits
from contactsync.engine.links import SyncMode
from contactsync.engine.mapping import BC_ID_PROPERTY, BC_SELECT, GRAPH_SELECT
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.sync.runner import sync_user

WRITE_METHODS = ("POST", "PATCH", "DELETE")
# What the product's Outlook updates send: every mapped field (a push overwrites).
GRAPH_PATCHED = frozenset({
    "displayName", "givenName", "middleName", "surname", "emailAddresses", "companyName",
    "jobTitle", "businessPhones", "mobilePhone", "businessAddress", "businessHomePage",
    "categories", "singleValueExtendedProperties",
})  # fmt: skip


def _peak_rss_mb() -> float:
    """The process's high-water mark since it started (ru_maxrss): every run so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _summarize(counts: dict[str, int]) -> tuple[int, int, str]:
    total = sum(counts.values())
    # A $batch's inner requests are counted on their own routes: count the envelope once.
    writes = sum(n for k, n in counts.items()
                 if k.split()[1] in WRITE_METHODS and not k.endswith("$batch"))
    kinds = ", ".join(f"{k}={n}" for k, n in sorted(counts.items()))
    return total, writes, kinds


def _graph_body(person: dict[str, Any]) -> dict[str, Any]:
    """A Graph contact body of the product's shape (every mapped field, the BC-id tag), built
    the plainest way: the floor's writes must weigh what the product's weigh."""
    name = person.get("displayName") or ""
    first, _, last = name.partition(" ")
    return {
        "displayName": name, "givenName": first or None, "middleName": None,
        "surname": last or None,
        "emailAddresses": [{"address": person.get("email"), "name": name}],
        "companyName": person.get("companyName") or None,
        "jobTitle": person.get("jobTitle") or None,
        "businessPhones": [person["phoneNumber"]] if person.get("phoneNumber") else [],
        "mobilePhone": person.get("mobilePhoneNumber") or None,
        "businessAddress": {"street": person.get("addressLine1") or None,
                            "city": person.get("city") or None,
                            "state": person.get("state") or None,
                            "postalCode": person.get("postalCode") or None,
                            "countryOrRegion": person.get("country") or None},
        "businessHomePage": person.get("website") or None,
        "categories": ["Business Central"],
        "singleValueExtendedProperties": [{"id": BC_ID_PROPERTY, "value": person.get("id")}],
    }  # fmt: skip


async def _floor(urls: dict[str, str], counts: dict[str, int]) -> float:
    """The same requests, sent by the plainest possible script (no mapping, no store): the same
    listings ($select, page sizes, the folder as the product found it), the same number of
    writes with bodies of the same shape."""
    graph, bc = urls["graph"], urls["bc"]
    company = urls["company"]
    # Creates went 20 to a `$batch` (updates may share that route now: count the creates, each
    # on its own route inside the batch).
    creates = -(-counts.get("graph POST /v1.0/users/{u}/contactFolders/{f}/contacts", 0) // 20)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as http:
        folders = (await http.get(f"{graph}/users/{MAILBOX}/contactFolders")).json()["value"]
        folder = next((f["id"] for f in folders if f["displayName"] == "Business Central"), None)
        url: str | None = f"{bc}/companies({company})/contacts?$select={','.join(BC_SELECT)}"
        bc_items: list[dict[str, Any]] = []
        while url:
            page = (await http.get(url, headers={"Prefer": "odata.maxpagesize=20000"})).json()
            bc_items.extend(page["value"])
            url = page.get("@odata.nextLink")
        scratch = None
        if creates:  # into a folder of its own, deleted after: the floor must change nothing
            scratch = (await http.post(f"{graph}/users/{MAILBOX}/contactFolders",
                                       json={"displayName": f"floor {time.time()}"})).json()["id"]
        graph_items: list[dict[str, Any]] = []
        # The product listed the folder before writing to it: empty when it created contacts.
        listed = scratch or folder
        if listed:
            url = (f"{graph}/users/{MAILBOX}/contactFolders/{listed}/contacts?$top=500"
                   f"&$select={','.join(GRAPH_SELECT)}&$expand="
                   f"singleValueExtendedProperties($filter=id eq '{BC_ID_PROPERTY}')")
            while url:
                page = (await http.get(url)).json()
                graph_items.extend(page["value"])
                url = page.get("@odata.nextLink")
        people = iter(bc_items)
        for _ in range(creates):
            requests = [{"id": str(i), "method": "POST",
                         "url": f"/users/{MAILBOX}/contactFolders/{scratch}/contacts",
                         "headers": {"Content-Type": "application/json"},
                         "body": _graph_body(p)}
                        for i, p in zip(range(20), people, strict=False)]
            if requests:
                await http.post(f"{graph}/$batch", json={"requests": requests})
        if scratch:
            await http.delete(f"{graph}/users/{MAILBOX}/contactFolders/{scratch}")
        # Updates: re-send each contact's own values, so the floor changes nothing.
        graph_patches = sum(n for k, n in counts.items() if k.startswith("graph PATCH"))
        for contact in graph_items[:graph_patches]:
            body = {k: v for k, v in contact.items() if k in GRAPH_PATCHED}
            await http.patch(f"{graph}/users/{MAILBOX}/contacts/{contact['id']}", json=body)
        bc_patches = sum(n for k, n in counts.items() if k.startswith("bc PATCH"))
        for contact in bc_items[:bc_patches]:
            await http.patch(f"{bc}/companies({company})/contacts({contact['id']})",
                             json={"jobTitle": contact.get("jobTitle", "")},
                             headers={"If-Match": "*"})
    return time.perf_counter() - started


def _floor_process(urls: dict[str, str], counts: dict[str, int], out: Any) -> None:
    out.put(asyncio.run(_floor(urls, counts)))


def _floor_in_child(urls: dict[str, str], counts: dict[str, int]) -> float:
    """The floor in a child process, so its listings never count in the product's peak RSS."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_floor_process, args=(urls, counts, out))
    proc.start()
    seconds = float(out.get())
    proc.join()
    return seconds


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


async def _run(size: int) -> None:
    emu = EmulatorProcess()
    try:
        emu.call("seed", size)
        urls = emu.urls
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.open(f"sqlite:///{tmp}/bench.db")
            setup = store.setups.add(UserSetup(user_id=MAILBOX, mailbox=MAILBOX))
            # The emulators' budgets are lifted (emulator_process.py), so lift the clients' own
            # too: at Graph's real 10,000 requests per 10 minutes, loading 100,000 contacts
            # into one mailbox takes at least 100 minutes, whatever the product does.
            graph = GraphClient.create(urls["graph"], options=GraphClientOptions(
                limits=BudgetLimits(4, 10**9, 600.0)))
            bc = await BcClient.create(urls["bc"], urls["company"],
                                       limits=BudgetLimits(5, 10**9, 300.0))
            print(f"\nsync_full: 1 user, {size:,} BC contacts (cores: {os.cpu_count()})")
            for phase in ("empty folder", "no change", "1% changed each side"):
                edited = emu.call("edit", 0.01) if phase.startswith("1%") else None
                emu.call("reset_counts")
                reset = reset_high_water()
                started = time.perf_counter()
                report = await sync_user(setup, SyncMode.FULL, graph=graph, bc=bc, store=store)
                wall = time.perf_counter() - started
                counts = emu.call("counts")
                total, writes, kinds = _summarize(counts)
                # Before the floor, which runs in a process of its own anyway.
                run_peak = high_water_mb() if reset else None
                peak = _peak_rss_mb()
                emu.call("reset_counts")
                floor = statistics.median(_floor_in_child(urls, counts) for _ in range(3))
                print(f"  {phase}: wall {wall:.2f} s, floor {floor:.2f} s "
                      f"(ratio {wall / floor:.2f}), requests {total}, writes {writes}, "
                      f"failures {report.failed}, peak RSS {_mb(run_peak)} this run "
                      f"(process high-water {peak:.0f} MB)")
                if edited:
                    print(f"    edited: {edited}; planned updates outlook="
                          f"{report.summary.updated_outlook} bc={report.summary.updated_bc}")
                print(f"    requests by kind: {kinds}")
                emu.call("reset_counts")
            await graph.close()
            await bc.aclose()
            store.close()
    finally:
        emu.stop()


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "10000,100000").split(",")]
    for size in sizes:
        asyncio.run(_run(size))


if __name__ == "__main__":
    main()
