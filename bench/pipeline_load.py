"""Sustained mixed load through the whole pipeline (`contactsync run`) against the emulators.

Four users with different filters; BC edits of Seattle contacts fan out to several folders,
Outlook edits in one user's folder go to BC (and from there to the other users whose filter
holds the contact). For each rate, open loop for a fixed time, then until quiet:
- propagated changes per second (a change landing at one place counts once per place);
- end-to-end latency p50/p99 from the edit to the write at the other side, both timed inside
  the emulators' process (the edit's return, and the emulators' change hook on the write that
  lands), and "pipeline-added": each sample less the emulators' own notification delays on its
  path, nothing else (a BC edit: BC's 50 ms batching; an Outlook edit: Graph's 20 ms batch
  window, to BC and to the other users alike, since the applier publishes its BC write for
  them without waiting for BC's notification). The emulators' request handling stays in it
  (counted against us);
- API requests and writes per propagated change (the emulators' counters; a request inside a
  `$batch` counts once, on its own route, the envelope not at all), and echo writes
  (writes beyond one per propagated change);
- the CPU each process used (cores busy: pipeline, emulators, broker, role processes) and the
  pipeline's CPU per propagated change; the pipeline process's peak RSS. Baseline in the same
  run: ten idle seconds of the pipeline (its requests per second), so polling cost is not
  taken for load. The machine's load average is printed: other work on it skews the figures.
The webhook's own accept latency has its benchmark: bench/webhook_load.py.

Knobs (environment): BENCH_RATES=10,50,200, BENCH_SECONDS=15; BENCH_SPLIT=applier,router,...
runs those roles as processes of their own (scale-out) instead of threads of this one;
BENCH_STAGES=1 prints where a BC change's time goes (bench/stage_lags.py); BENCH_PROFILE=applier
profiles roles' threads with pyinstrument (wall time); BENCH_PYSPY=1 samples the CPU with py-spy
and prints, per role, the frames it went to in ms per propagated change (bench/role_cpu.py);
BENCH_LOG_LEVEL=INFO shows the roles' logs.

The pipeline's CPU per propagated change is printed per role too (each thread's CPU time from
/proc, summed by the role it works for), next to the goals of issue 16 (GOALS).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import role_cpu
from bench.emulator_process import EmulatorProcess
from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.links import SyncMode
from contactsync.kafka.local_broker import LocalBroker, free_port
from contactsync.kafka.topics import ensure_topics_at
from contactsync.logs import configure_logging
from contactsync.pipeline import ALL_ROLES, Pipeline
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings, default_cache_dir
from contactsync.store import Store
from contactsync.sync.runner import sync_user

USERS: dict[str, dict[str, str]] = {
    "anna@contoso.test": {},
    "ben@contoso.test": {"city": "Seattle|Redmond"},
    "chloe@contoso.test": {"country": "US"},
    "dan@contoso.test": {"city": "Seattle"},
}
EDITOR = "anna@contoso.test"  # the Outlook user who edits
# The emulators' notification delays in their test timings (EmulatorProcess(fast=True)).
BC_NOTIFY_DELAY = 0.05
GRAPH_NOTIFY_DELAY = 0.02
RATES = tuple(int(r) for r in os.environ.get("BENCH_RATES", "10,50,200").split(","))
SECONDS = float(os.environ.get("BENCH_SECONDS", "15"))
SEED = 600
# Issue 16's goals, printed next to the figures.
GOALS = ("goals: pipeline CPU <= 2.5 ms per propagated change at 50/s; pipeline-added p99 "
         "< 250 ms at 50/s (one process) and at 100/s (BENCH_SPLIT); <= 1.2 requests per "
         "change at every rate; 1.00 writes per change; 0 echo writes")


def _relevant(emu: EmulatorProcess) -> dict[str, int]:
    """Requests by route, subscription upkeep left out."""
    counts: dict[str, int] = emu.call("counts")
    return {k: n for k, n in counts.items() if "subscriptions" not in k}


def _counts(emu: EmulatorProcess) -> tuple[int, int]:
    """API requests and writes: each request inside a `$batch` counts on its own route (as
    Graph's throttling counts it); the `$batch` envelope carrying them is not one more."""
    relevant = {k: n for k, n in _relevant(emu).items() if not k.endswith("$batch")}
    writes = sum(n for k, n in relevant.items() if k.split()[1] in ("POST", "PATCH", "DELETE"))
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


class _RoleProcesses:
    """BENCH_SPLIT=applier,applier,router,...: those roles as processes of their own (the CLI's
    role commands, as scale-out runs them); the other roles stay in the bench's process."""

    def __init__(self, names: list[str], settings: Settings) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
               "CONTACTSYNC_TOPIC_PREFIX": settings.topic_prefix,
               "CONTACTSYNC_DATABASE_URL": settings.database_url,
               "CONTACTSYNC_GRAPH_BASE_URL": settings.graph_base_url,
               "CONTACTSYNC_BC_BASE_URL": settings.bc_base_url,
               "CONTACTSYNC_BC_COMPANY": settings.bc_company,
               "CONTACTSYNC_WEBHOOK_PUBLIC_URL": settings.webhook_public_url,
               "CONTACTSYNC_LOG_LEVEL": "WARNING", "CONTACTSYNC_LOG_FORMAT": "json"}
        cli = str(Path(sys.executable).with_name("contactsync"))
        # Replicas of a role on one host need their own static member names.
        self.procs = [(name, subprocess.Popen(
            [cli, name], env={**env, "CONTACTSYNC_KAFKA_INSTANCE_ID": f"bench-{i}"},
            stdout=subprocess.DEVNULL)) for i, name in enumerate(names)]

    def pids(self) -> dict[str, int | None]:
        return {f"{name}#{i}": proc.pid for i, (name, proc) in enumerate(self.procs)}

    def peak_rss_mb(self) -> float:
        total = 0.0
        for _, proc in self.procs:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        return total

    def stop(self) -> None:
        for _, proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else float("nan")


def _notify_delay(from_bc: bool) -> float:
    """The emulators' own notification delay on an edit's path, the same to every place it
    lands (an Outlook edit reaches the other users from the applier's BC write, not from
    BC's notification)."""
    return BC_NOTIFY_DELAY if from_bc else GRAPH_NOTIFY_DELAY


def _cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU time (user + system, all threads) of each process so far."""
    out = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times() if pid else None
        except psutil.Error:
            times = None
        out[name] = (times.user + times.system) if times else 0.0
    return out


def _run_rate(emu: EmulatorProcess, rate: int, people: list[tuple[str, str, str, str]],
              filters: dict[str, ContactFilter], start_token: int,
              pids: dict[str, int | None], webhook_thread: str) -> dict[str, Any]:
    editor_folder: dict[str, str] = emu.call("folder", EDITOR)
    by_email = {email: (cid, city, country) for cid, email, city, country in people}
    seattle = [p for p in people if p[2] == "Seattle"]
    others = [e for e in editor_folder if e in by_email and by_email[e][1] != "Seattle"]
    sent: dict[str, tuple[float, set[str], bool]] = {}  # token -> (time, places, from BC)
    latest: dict[str, str] = {}  # contact id -> its last token (an earlier one may be
    # overtaken by the next edit of the same contact before it lands: not a loss)
    requests0, writes0 = _counts(emu)
    routes0 = _relevant(emu)
    cpu0 = _cpu_seconds(pids)
    kernel0 = psutil.Process().cpu_times().system
    threads0 = role_cpu.thread_cpu()
    spy = role_cpu.PySpy(f"{rate}") if os.environ.get("BENCH_PYSPY") else None
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < SECONDS:
        due = started + n / rate
        time.sleep(max(0.0, due - time.monotonic()))
        token = f"tok-{start_token + n}"
        # Each side edits its own contacts, round robin: no two edits of one contact race
        # (a real conflict is tested elsewhere), and every edit is the last of its contact
        # within a round of the list, so every token must land.
        if n % 2 == 0:  # a BC edit of a contact in Seattle: it fans out
            cid, email, city, country = seattle[(n // 2) % len(seattle)]
            places = {u for u, f in filters.items()
                      if f.matches({"city": city, "country": country, "type": "Person"})}
            t0 = emu.call("bc_edit", (cid, {"jobTitle": token}))
        else:  # an Outlook edit by the editor: reaches BC, then the others holding it
            email = others[(n // 2) % len(others)]
            cid, city, country = by_email[email]
            places = {"bc"} | {u for u, f in filters.items() if u != EDITOR and f.matches(
                {"city": city, "country": country, "type": "Person"})}
            t0 = emu.call("outlook_edit", (EDITOR, editor_folder[email], {"jobTitle": token}))
        sent[token] = (t0, places, n % 2 == 0)
        latest[cid] = token
        n += 1
    del elapsed
    _wait_quiet(emu)
    total = time.monotonic() - started
    requests1, writes1 = _counts(emu)
    routes = {k: n - routes0.get(k, 0) for k, n in _relevant(emu).items()}
    cpu1 = _cpu_seconds(pids)
    kernel1 = psutil.Process().cpu_times().system
    roles = role_cpu.by_role(threads0, role_cpu.thread_cpu(), webhook_thread)
    spied = spy.stop() if spy is not None else None
    seen: dict[tuple[str, str], float] = emu.call("seen")
    latencies, added, expected, landed = [], [], 0, 0
    last_tokens = set(latest.values())
    for token, (t0, places, from_bc) in sent.items():
        for place in places:
            if (place, token) not in seen and token not in last_tokens:
                continue  # overtaken by a later edit of the same contact
            expected += 1
            if (place, token) in seen:
                landed += 1
                latency = max(0.0, seen[(place, token)] - t0)
                latencies.append(latency)
                added.append(max(0.0, latency - _notify_delay(from_bc)))
    writes = writes1 - writes0
    return {
        "rate": rate, "changes": n, "expected": expected, "landed": landed,
        "per_second": landed / total if total else 0.0,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": _p99(latencies),
        "added_p50": statistics.median(added) if added else float("nan"),
        "added_p99": _p99(added),
        "requests_per": (requests1 - requests0) / landed if landed else float("nan"),
        "writes_per": writes / landed if landed else float("nan"),
        "echo_writes": max(0, writes - landed),
        "cores": {name: (cpu1[name] - cpu0[name]) / total for name in pids},
        "pipeline_cpu_ms": (cpu1["pipeline"] - cpu0["pipeline"]) * 1000 / landed
        if landed else float("nan"),
        "pipeline_kernel_ms": (kernel1 - kernel0) * 1000 / landed if landed else float("nan"),
        "routes": {k: n / landed for k, n in sorted(routes.items(), key=lambda kv: -kv[1])
                   if n and landed},
        "role_ms": {role: used * 1000 / landed if landed else float("nan")
                    for role, used in sorted(roles.items(), key=lambda kv: -kv[1])},
        "profile": role_cpu.summarise(spied, landed, webhook_thread) if spied else "",
    }


def _profile_roles(names: str) -> None:
    """BENCH_PROFILE=applier,router,...: profile those roles' threads with pyinstrument (a dev
    dependency) and write each profile to the temp dir when the role stops."""
    from pyinstrument import Profiler

    wanted = set(names.split(","))
    guard = Pipeline._guard

    def profiled(self: Pipeline, role: Any) -> None:
        if role.name not in wanted:
            return guard(self, role)
        profiler = Profiler(interval=0.005)
        profiler.start()
        try:
            return guard(self, role)
        finally:
            profiler.stop()
            out = Path(tempfile.gettempdir()) / f"pipeline-profile-{role.name}.txt"
            out.write_text(profiler.output_text(unicode=False, show_all=False))
            print(f"  profile of {role.name}: {out}")

    Pipeline._guard = profiled  # type: ignore[method-assign]


def main() -> None:
    configure_logging(os.environ.get("BENCH_LOG_LEVEL", "WARNING"), "json")  # roles' logs cost
    # A stopped benchmark still stops its broker and emulators (the `finally` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.environ.get("BENCH_PROFILE"):
        _profile_roles(os.environ["BENCH_PROFILE"])
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
    roles: _RoleProcesses | None = None
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
        split = [r for r in os.environ.get("BENCH_SPLIT", "").split(",") if r]
        if split:
            roles = _RoleProcesses(split, settings)
        pipeline = Pipeline(settings, store, webhook_port=port,
                            roles=tuple(r for r in ALL_ROLES if r not in split))
        pipeline.start()
        deadline = time.monotonic() + 60
        while len(store.subscriptions.list_all()) < len(USERS) + 1:
            if time.monotonic() > deadline:
                raise SystemExit("the subscriptions were not made within 60 s")
            time.sleep(0.5)
        _wait_quiet(emu)
        idle0 = _counts(emu)[0]
        idle_cpu0 = _cpu_seconds({"pipeline": os.getpid()})["pipeline"]
        time.sleep(10)
        idle_rate = (_counts(emu)[0] - idle0) / 10
        idle_cores = (_cpu_seconds({"pipeline": os.getpid()})["pipeline"] - idle_cpu0) / 10
        people = emu.call("bc_people")
        filters = {u: ContactFilter.parse(f) for u, f in USERS.items()}
        emu.call("watch")
        pids = {"pipeline": os.getpid(), "emulators": emu.pid,
                "broker": broker.status().pid if broker is not None else None,
                **(roles.pids() if roles is not None else {})}
        print(f"pipeline_load: {len(USERS)} users, {SEED} BC persons, cores {os.cpu_count()}")
        print(f"  {GOALS}")
        print(f"  baseline: idle pipeline makes {idle_rate:.1f} API requests/s and keeps "
              f"{idle_cores:.2f} cores busy")
        token = 0
        started_at = datetime.now(UTC)
        for rate in RATES:
            r = _run_rate(emu, rate, people, filters, token, pids, f"http-{port}")
            token += r["changes"]
            print(f"  {rate}/s for {SECONDS:.0f} s: {r['changes']} edits, landed "
                  f"{r['landed']}/{r['expected']} ({r['per_second']:.0f} propagated/s); "
                  f"latency p50 {r['p50'] * 1000:.0f} ms p99 {r['p99'] * 1000:.0f} ms "
                  f"(pipeline-added p50 {r['added_p50'] * 1000:.0f} ms p99 "
                  f"{r['added_p99'] * 1000:.0f} ms); "
                  f"requests/change {r['requests_per']:.2f}, writes/change "
                  f"{r['writes_per']:.2f}, echo writes {r['echo_writes']}")
            print("      cores busy: " + ", ".join(f"{name} {used:.2f}" for name, used
                                                  in r["cores"].items())
                  + f"; pipeline CPU {r['pipeline_cpu_ms']:.1f} ms per propagated change "
                  f"({r['pipeline_kernel_ms']:.1f} of it in the kernel)")
            print("      per role, ms per propagated change: " + ", ".join(
                f"{role} {ms:.2f}" for role, ms in r["role_ms"].items() if ms >= 0.005))
            print("      requests per propagated change, by route: " + ", ".join(
                f"{route} {per:.2f}" for route, per in r["routes"].items()))
            if r["profile"]:
                print(r["profile"])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if roles is not None:
            print(f"  role processes ({', '.join(split)}) peak RSS, summed: "
                  f"{roles.peak_rss_mb():.0f} MB")
        print(f"  pipeline process peak RSS {peak:.0f} MB; answers by status "
              f"{emu.call('statuses')}; load average {os.getloadavg()[0]:.1f}")
        if os.environ.get("BENCH_STAGES"):
            from bench.stage_lags import report

            report(bootstrap, settings, started_at)
    finally:
        if pipeline is not None:
            pipeline.stop(timeout=120)
        if roles is not None:
            roles.stop()
        if store is not None:
            store.close()
        emu.stop()
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    main()
