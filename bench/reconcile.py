"""The full-reconcile job against the emulators (issue 6): wall time, API requests, writes,
peak RSS, with no drift and with 1% drift.

Sizes are USERSxCONTACTS (`BENCH_SIZES`, default `100x1000,1x100000`); `BENCH_REPEAT` (default
1) repeats each measured phase and prints medians; `BENCH_APPLIERS` (default 2) applier
processes.

- Several users: through the product's whole path. The commands go on `sync.commands` (a local
  broker, or KAFKA_BOOTSTRAP_SERVERS), `BENCH_APPLIERS` applier processes (`contactsync applier`,
  one consumer group) run them, and the benchmark follows `sync.results` as `reconcile --wait`
  does. Each phase gets fresh applier processes, so the peak RSS printed (VmHWM) is that
  phase's; "users per process" counts the full syncs each process applied (from its log).
  Every user holds every BC contact. Drift: 1% of the BC contacts edited in BC, and in every
  folder the same 1% edited in Outlook (one value), so the edits do not cascade further.
- One user: the reconcile in a process of its own (inline, as `reconcile --inline`), with the
  clients' request budgets lifted as in bench/sync_full.py (at Graph's real 10,000 requests
  per 10 minutes, loading 100,000 contacts into one mailbox takes 100 minutes). Drift: 1% of
  the contacts changed on each side. The process (bench/reconcile_inline.py) imports what the
  command imports, not this module; "after imports" is its RSS before the reconcile starts.

The emulators run in a child process, so no figure here counts their memory. Goals: no drift
means zero writes; peak RSS under 300 MB.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.emulator_process import MAILBOX, EmulatorProcess
from bench.reconcile_inline import reconcile_in_child
from contactsync.kafka.local_broker import LocalBroker
from contactsync.kafka.topics import ensure_topics_at
from contactsync.producers.reconcile import (
    CommandPublisher,
    ResultWaiter,
    new_run_id,
    reconcile_command,
)
from contactsync.schemas.messages import ResultStatus
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings, default_cache_dir
from contactsync.store import Store

WRITE_METHODS = ("POST", "PATCH", "DELETE")
APPLIER_GROUP = "contactsync-applier"


def _requests_and_writes(counts: dict[str, int]) -> tuple[int, int]:
    # A $batch's inner requests are counted on their own routes: count the envelope once.
    writes = sum(n for k, n in counts.items()
                 if k.split()[1] in WRITE_METHODS and not k.endswith("$batch"))
    return sum(counts.values()), writes


def _sizes() -> list[tuple[int, int]]:
    out = []
    for spec in os.environ.get("BENCH_SIZES", "100x1000,1x100000").split(","):
        users, _, contacts = spec.strip().partition("x")
        out.append((int(users), int(contacts)))
    return out


@dataclass
class _Phase:
    wall: float
    requests: int
    writes: int
    planned_writes: int
    statuses: dict[str, int]
    per_process: list[int]
    peak_rss_mb: float
    not_ok: list[str] = field(default_factory=list)  # "user: reason" of runs not ok
    baseline_rss_mb: float | None = None  # one user: the child's RSS after imports, before work


def _print(name: str, runs: list[_Phase], kinds: str) -> None:
    med = statistics.median
    last = runs[-1]
    per_process = f", users per process {last.per_process}" if last.per_process else ""
    baselines = [r.baseline_rss_mb for r in runs if r.baseline_rss_mb is not None]
    baseline = f" (after imports {max(baselines):.0f} MB)" if baselines else ""
    print(f"  {name}: wall {med(r.wall for r in runs):.2f} s, requests "
          f"{med(r.requests for r in runs):.0f}, writes {med(r.writes for r in runs):.0f} "
          f"(report: {last.planned_writes}), results {last.statuses}{per_process}, "
          f"peak RSS {max(r.peak_rss_mb for r in runs):.0f} MB{baseline}"
          + (f" (median of {len(runs)})" if len(runs) > 1 else ""))
    print(f"    requests by kind: {kinds}")
    for line in last.not_ok[:3]:
        print(f"    not ok: {line}")


# --- several users, through Kafka and applier processes ---

class _Appliers:
    """`contactsync applier` processes in one consumer group, each logging to its own file."""

    def __init__(self, n: int, env: dict[str, str], tmp: Path) -> None:
        self.logs = [tmp / f"applier-{i}-{time.time_ns()}.log" for i in range(n)]
        exe = Path(sys.executable).with_name("contactsync")
        self.procs = []
        for i, log in enumerate(self.logs):
            # Replicas on one host need their own static member names (else one fences another).
            replica = {**env, "CONTACTSYNC_KAFKA_INSTANCE_ID": f"bench-applier-{i}"}
            with log.open("w") as out:
                self.procs.append(subprocess.Popen([str(exe), "applier"], env=replica,
                                                   stdout=out, stderr=subprocess.STDOUT))

    def wait_joined(self, settings: Settings, timeout: float = 60.0) -> None:
        """Until every process is a member of the group (else the first takes all)."""
        from kafka.errors import KafkaError

        from contactsync.kafka.topics import group_name, make_admin

        group_id = group_name(settings, APPLIER_GROUP)
        admin = make_admin(settings)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    group = admin.describe_groups([group_id]).get(group_id, {})
                except KafkaError:  # no coordinator yet: the group is being made
                    group = {}
                members = group.get("members") or []
                if group.get("group_state") == "Stable" and len(members) == len(self.procs):
                    return
                time.sleep(0.5)
        finally:
            admin.close()
        raise SystemExit("the applier processes did not all join their group")

    def stop(self) -> tuple[list[int], float]:
        """Full syncs applied per process, and the largest peak RSS (VmHWM) among them."""
        peaks = []
        for proc in self.procs:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peaks.append(int(next(line.split()[1] for line in status.splitlines()
                                  if line.startswith("VmHWM:"))) / 1024)
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)
        applied = [sum(1 for line in log.read_text().splitlines()
                       if '"applied"' in line and '"full_sync"' in line) for log in self.logs]
        return applied, max(peaks)


def _edit_users(emu: EmulatorProcess, mailboxes: list[str], share: float) -> None:
    people = emu.call("bc_people")
    step = max(1, round(1 / share))
    for cid, *_ in people[::step]:
        emu.call("bc_edit", (cid, {"jobTitle": f"BC {time.time_ns()}"}))
    title = f"Outlook {time.time_ns()}"
    for mailbox in mailboxes:
        folder: dict[str, str] = emu.call("folder", mailbox)
        for email in sorted(folder)[step // 2::step]:
            emu.call("outlook_edit", (mailbox, folder[email], {"jobTitle": title}))


def _run_users(n_users: int, n_contacts: int, appliers: int, repeat: int,
               bootstrap: str, tmp: Path) -> None:
    mailboxes = [f"bench{i:03d}@contoso.test" for i in range(n_users)]
    emu = EmulatorProcess(mailboxes=tuple(mailboxes))
    try:
        emu.call("seed", n_contacts)
        settings = Settings(kafka_bootstrap_servers=bootstrap,
                            topic_prefix=f"reconcile{time.time_ns()}.",
                            database_url=f"sqlite:///{tmp / f'users{time.time_ns()}.db'}",
                            graph_base_url=emu.urls["graph"], bc_base_url=emu.urls["bc"],
                            bc_company=emu.urls["company"])
        ensure_topics_at(bootstrap, settings)
        with Store.open(settings.database_url) as store:
            for mailbox in mailboxes:
                store.setups.add(UserSetup(user_id=mailbox, mailbox=mailbox))
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "CONTACTSYNC_TOPIC_PREFIX": settings.topic_prefix,
               "CONTACTSYNC_DATABASE_URL": settings.database_url,
               "CONTACTSYNC_GRAPH_BASE_URL": settings.graph_base_url,
               "CONTACTSYNC_BC_BASE_URL": settings.bc_base_url,
               "CONTACTSYNC_BC_COMPANY": settings.bc_company,
               "CONTACTSYNC_LOG_FORMAT": "json", "CONTACTSYNC_LOG_LEVEL": "INFO"}
        print(f"\nreconcile: {n_users} users x {n_contacts:,} contacts, {appliers} applier "
              f"processes, {settings.topic_partitions} partitions (cores: {os.cpu_count()})")

        def phase(drift: bool) -> tuple[_Phase, str]:
            if drift:
                _edit_users(emu, mailboxes, 0.01)
            procs = _Appliers(appliers, env, tmp)
            procs.wait_joined(settings)
            emu.call("reset_counts")
            run_id = new_run_id("bench")
            waiter = ResultWaiter(settings)
            publisher = CommandPublisher(settings)
            started = time.perf_counter()
            publisher.publish([reconcile_command(m, run_id) for m in mailboxes])
            results = waiter.follow(run_id, mailboxes, timeout=3600)
            wall = time.perf_counter() - started
            publisher.close()
            waiter.close()
            counts = emu.call("counts")
            per_process, peak = procs.stop()
            requests, writes = _requests_and_writes(counts)
            statuses: dict[str, int] = {}
            for r in results.values():
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            if len(results) < len(mailboxes):
                statuses["missing"] = len(mailboxes) - len(results)
            planned = sum(r.summary.get("writes", 0) for r in results.values())
            kinds = ", ".join(f"{k}={n}" for k, n in sorted(counts.items()))
            not_ok = [f"{r.user_id}: {r.reason}" for r in results.values()
                      if r.status != ResultStatus.OK]
            return _Phase(wall, requests, writes, planned, statuses, per_process, peak,
                          not_ok), kinds

        for name, drift, times in (("initial load", False, 1), ("no drift", False, repeat),
                                   ("1% drift", True, repeat)):
            runs, kinds = [], ""
            for _ in range(times):
                run, kinds = phase(drift)
                runs.append(run)
            _print(name, runs, kinds)
    finally:
        emu.stop()


# --- one user, inline, in processes of its own ---

def _run_one(n_contacts: int, repeat: int, tmp: Path) -> None:
    emu = EmulatorProcess()
    try:
        emu.call("seed", n_contacts)
        db_url = f"sqlite:///{tmp / f'one{time.time_ns()}.db'}"
        with Store.open(db_url) as store:
            store.setups.add(UserSetup(user_id=MAILBOX, mailbox=MAILBOX))
        print(f"\nreconcile: 1 user x {n_contacts:,} contacts, inline in a process of its own "
              f"(cores: {os.cpu_count()})")
        for name, drift, times in (("initial load", False, 1), ("no drift", False, repeat),
                                   ("1% drift", True, repeat)):
            runs, kinds = [], ""
            for _ in range(times):
                if drift:
                    emu.call("edit", 0.01)
                emu.call("reset_counts")
                r = reconcile_in_child(emu.urls, db_url, MAILBOX)
                counts = emu.call("counts")
                requests, writes = _requests_and_writes(counts)
                kinds = ", ".join(f"{k}={n}" for k, n in sorted(counts.items()))
                runs.append(_Phase(r["wall"], requests, writes, r["writes"], {r["status"]: 1},
                                   [], r["peak"], baseline_rss_mb=r["baseline"]))
            _print(name, runs, kinds)
    finally:
        emu.stop()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop what we started
    repeat = int(os.environ.get("BENCH_REPEAT", "1"))
    appliers = int(os.environ.get("BENCH_APPLIERS", "2"))
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    broker = None
    try:
        for users, contacts in _sizes():
            if users == 1:
                _run_one(contacts, repeat, tmp)
                continue
            if not bootstrap:
                broker = LocalBroker(tmp / "kafka", version=Settings().kafka_version,
                                     cache_dir=default_cache_dir())
                bootstrap = broker.up()
            _run_users(users, contacts, appliers, repeat, bootstrap, tmp)
    finally:
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    main()
