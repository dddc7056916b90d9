"""Sustained mixed load through the whole pipeline (`contactsync run`) against the emulators.

Four users with different filters; BC edits of Seattle contacts fan out to several folders,
Outlook edits in one user's folder go to BC (and from there to the other users whose filter
holds the contact). For each rate, open loop for a fixed time, then until quiet:
- propagated changes per second (a change landing at one place counts once per place);
- end-to-end latency p50/p99 from the edit to the write at the other side, as seen by a
  watcher in the emulators' process (100 ms resolution), and the same less the emulators' own
  notification delays (BC 50 ms batching, Graph 20 ms) = what the pipeline adds;
- API requests and writes per propagated change (the emulators' counters), and echo writes
  (writes beyond one per propagated change);
- the pipeline process's peak RSS. Baseline in the same run: an idle minute's worth of the
  pipeline doing nothing (its requests per second), so polling cost is not taken for load.
The webhook's own accept latency has its benchmark: bench/webhook_load.py.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.emulator_process import EmulatorProcess
from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.links import SyncMode
from contactsync.kafka.local_broker import LocalBroker, free_port
from contactsync.kafka.topics import ensure_topics_at
from contactsync.logs import configure_logging
from contactsync.pipeline import Pipeline
from contactsync.settings import Settings, default_cache_dir
from contactsync.store import Store
from contactsync.sync.runner import sync_user
from schemas.setup import UserSetup

USERS: dict[str, dict[str, str]] = {
    "anna@contoso.test": {},
    "ben@contoso.test": {"city": "Seattle|Redmond"},
    "chloe@contoso.test": {"country": "US"},
    "dan@contoso.test": {"city": "Seattle"},
}
EDITOR = "anna@contoso.test"  # the Outlook user who edits
EMULATOR_DELAY = 0.05  # BC notification batching in the emulators' test timings
RATES = (10, 50, 200)
SECONDS = 15.0
SEED = 600


def _counts(emu: EmulatorProcess) -> tuple[int, int]:
    counts: dict[str, int] = emu.call("counts")
    relevant = {k: n for k, n in counts.items() if "subscriptions" not in k}
    writes = sum(n for k, n in relevant.items()
                 if k.split()[1] in ("POST", "PATCH", "DELETE") and not k.endswith("$batch"))
    return sum(relevant.values()), writes


async def _initial_sync(settings: Settings, store: Store) -> None:
    graph = GraphClient.create(settings.graph_base_url)
    bc = await BcClient.create(settings.bc_base_url, settings.bc_company)
    try:
        for setup in store.setups.list_all():
            await sync_user(setup, SyncMode.FULL, graph=graph, bc=bc, store=store)
    finally:
        await bc.aclose()
        await graph.close()


def _wait_quiet(emu: EmulatorProcess, seconds: float = 3.0, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last, since = _counts(emu)[1], time.monotonic()
    while time.monotonic() - since < seconds and time.monotonic() < deadline:
        time.sleep(0.5)
        now = _counts(emu)[1]
        if now != last:
            last, since = now, time.monotonic()


def _run_rate(emu: EmulatorProcess, rate: int, people: list[tuple[str, str, str, str]],
              filters: dict[str, ContactFilter], start_token: int) -> dict[str, Any]:
    editor_folder: dict[str, str] = emu.call("folder", EDITOR)
    by_email = {email: (cid, city, country) for cid, email, city, country in people}
    seattle = [p for p in people if p[2] == "Seattle"]
    others = [e for e in editor_folder if e in by_email and by_email[e][1] != "Seattle"]
    sent: dict[str, tuple[float, set[str]]] = {}  # token -> (time, places it must reach)
    latest: dict[str, str] = {}  # contact id -> its last token (an earlier one may be
    # overtaken by the next edit of the same contact before it lands: not a loss)
    requests0, writes0 = _counts(emu)
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < SECONDS:
        due = started + n / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        token = f"tok-{start_token + n}"
        # Each side edits its own contacts, round robin: no two edits of one contact race
        # (a real conflict is tested elsewhere), and every edit is the last of its contact
        # within a round of the list, so every token must land.
        if n % 2 == 0:  # a BC edit of a contact in Seattle: it fans out
            cid, email, city, country = seattle[(n // 2) % len(seattle)]
            places = {u for u, f in filters.items()
                      if f.matches({"city": city, "country": country, "type": "Person"})}
            emu.call("bc_edit", (cid, {"jobTitle": token}))
        else:  # an Outlook edit by the editor: reaches BC, then the others holding it
            email = others[(n // 2) % len(others)]
            cid, city, country = by_email[email]
            places = {"bc"} | {u for u, f in filters.items() if u != EDITOR and f.matches(
                {"city": city, "country": country, "type": "Person"})}
            emu.call("outlook_edit", (EDITOR, editor_folder[email], {"jobTitle": token}))
        sent[token] = (time.time(), places)
        latest[cid] = token
        n += 1
    del elapsed
    _wait_quiet(emu)
    total = time.monotonic() - started
    requests1, writes1 = _counts(emu)
    seen: dict[tuple[str, str], float] = emu.call("seen")
    latencies, expected, landed = [], 0, 0
    last_tokens = set(latest.values())
    for token, (t0, places) in sent.items():
        for place in places:
            if (place, token) not in seen and token not in last_tokens:
                continue  # overtaken by a later edit of the same contact
            expected += 1
            if (place, token) in seen:
                landed += 1
                latencies.append(max(0.0, seen[(place, token)] - t0))
    writes = writes1 - writes0
    return {
        "rate": rate, "changes": n, "expected": expected, "landed": landed,
        "per_second": landed / total if total else 0.0,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else float("nan"),
        "requests_per": (requests1 - requests0) / landed if landed else float("nan"),
        "writes_per": writes / landed if landed else float("nan"),
        "echo_writes": max(0, writes - landed),
    }


def main() -> None:
    configure_logging("WARNING", "json")  # the roles' logs would cost more than they tell
    # A stopped benchmark still stops its broker and emulators (the `finally` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    broker = None
    if not bootstrap:
        broker = LocalBroker(tmp / "kafka", version=Settings().kafka_version,
                             cache_dir=default_cache_dir())
        bootstrap = broker.up()
    emu = EmulatorProcess(fast=True, mailboxes=tuple(USERS))
    pipeline = None
    store = None
    try:
        emu.call("seed", SEED)
        port = free_port()
        settings = Settings(
            kafka_bootstrap_servers=bootstrap, topic_prefix=f"bench{time.time_ns()}.",
            database_url=f"sqlite:///{tmp / 'state.db'}", graph_base_url=emu.urls["graph"],
            bc_base_url=emu.urls["bc"], bc_company=emu.urls["company"],
            webhook_public_url=f"http://127.0.0.1:{port}",
        )
        ensure_topics_at(bootstrap, settings)
        store = Store.open(settings.database_url)
        for mailbox, contact_filter in USERS.items():
            store.setups.add(UserSetup(user_id=mailbox, mailbox=mailbox,
                                       contact_filter=contact_filter))
        asyncio.run(_initial_sync(settings, store))
        pipeline = Pipeline(settings, store, webhook_port=port)
        pipeline.start()
        deadline = time.monotonic() + 60
        while len(store.subscriptions.list_all()) < len(USERS) + 1:
            if time.monotonic() > deadline:
                raise SystemExit("the subscriptions were not made within 60 s")
            time.sleep(0.5)
        _wait_quiet(emu)
        idle0 = _counts(emu)[0]
        time.sleep(10)
        idle_rate = (_counts(emu)[0] - idle0) / 10
        people = emu.call("bc_people")
        filters = {u: ContactFilter.parse(f) for u, f in USERS.items()}
        emu.call("watch")
        print(f"pipeline_load: {len(USERS)} users, {SEED} BC persons, cores {os.cpu_count()}")
        print(f"  baseline: idle pipeline makes {idle_rate:.1f} API requests/s")
        token = 0
        for rate in RATES:
            r = _run_rate(emu, rate, people, filters, token)
            token += r["changes"]
            print(f"  {rate}/s for {SECONDS:.0f} s: {r['changes']} edits, landed "
                  f"{r['landed']}/{r['expected']} ({r['per_second']:.0f} propagated/s); "
                  f"latency p50 {r['p50'] * 1000:.0f} ms p99 {r['p99'] * 1000:.0f} ms "
                  f"(pipeline-added p99 {(r['p99'] - EMULATOR_DELAY) * 1000:.0f} ms); "
                  f"requests/change {r['requests_per']:.2f}, writes/change "
                  f"{r['writes_per']:.2f}, echo writes {r['echo_writes']}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  pipeline process peak RSS {peak:.0f} MB")
    finally:
        if pipeline is not None:
            pipeline.stop()
        if store is not None:
            store.close()
        emu.stop()
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    main()
