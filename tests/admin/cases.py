"""The mistakes a new admin makes, each as a real `contactsync` command (issue 17).

`tests/admin/test_errors.py` runs every case and asserts its exit code, a short output with no
traceback, the sentence's key words, and that nothing changed on either side. Run as a module,
this prints the closing note's table (lines printed, seconds, exit code) for the code under
test and, with `--before DIR` (a checkout of an older main), for that code too:

    .venv/bin/python -m tests.admin.cases --before /tmp/main-checkout
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.common.faults import FaultSpec
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store

USER = "user1@contoso.test"
OFF = "off@contoso.test"
# CONTACTSYNC_CASES_CODE=DIR runs the commands from another checkout (the code before a fix),
# to see each test fail there.
OTHER_CODE = os.environ.get("CONTACTSYNC_CASES_CODE", "")
MODULE_CLI = [sys.executable, "-c", "from contactsync.cli.main import app; app()"]
CONTACTSYNC = MODULE_CLI if OTHER_CODE else [str(Path(sys.executable).with_name("contactsync"))]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    """Both emulators, a store with USER (enabled) and OFF (disabled), a scratch directory."""

    emulators: RunningEmulators
    store: Store
    tmp: Path
    kafka_env: dict[str, str] = field(default_factory=dict)  # a real broker's, when given

    @property
    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("CONTACTSYNC_", "KAFKA_", "AZURE_"))}
        return {**base, "CONTACTSYNC_GRAPH_BASE_URL": self.emulators.graph_base_url,
                "CONTACTSYNC_BC_BASE_URL": self.emulators.bc_base_url,
                "CONTACTSYNC_BC_COMPANY": self.emulators.bc.company_id,
                "CONTACTSYNC_DATABASE_URL": f"sqlite:///{self.tmp / 'state.db'}",
                "CONTACTSYNC_STATE_DIR": str(self.tmp / "state"),
                "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}",
                "CONTACTSYNC_LOG_FORMAT": "console", **self.kafka_env,
                **({"PYTHONPATH": OTHER_CODE} if OTHER_CODE else {})}

    def state(self) -> tuple[Any, ...]:
        """Everything a mistaken command could change: writes to both services, the store."""
        writes = 0
        for snap in (self.emulators.graph.counters_snapshot(),
                     self.emulators.bc.counters_snapshot()):
            writes += sum(r["count"] for r in snap["by_route"]
                          if r["method"] in ("POST", "PATCH", "DELETE"))
        setups = [s.model_dump() for s in self.store.setups.list_all()]
        links = sum(self.store.links.count(s.user_id) for s in self.store.setups.list_all())
        return writes, setups, links, len(self.store.audit.list_records(limit=10_000))


@contextmanager
def world(tmp: Path, kafka_env: dict[str, str] | None = None) -> Iterator[World]:
    emulators = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                                bc_config=BcEmulatorConfig.for_tests())
    store = Store.open(f"sqlite:///{tmp / 'state.db'}")
    try:
        for mailbox in (USER, OFF):
            emulators.graph.add_user(mailbox)
        store.setups.add(UserSetup(user_id=USER, mailbox=USER))
        store.setups.add(UserSetup(user_id=OFF, mailbox=OFF, enabled=False))
        for i in range(3):
            emulators.bc.create_contact({"displayName": f"Person {i}", "type": "Person",
                                         "email": f"person{i}@fabrikam.test"})
        yield World(emulators, store, tmp, dict(kafka_env or {}))
    finally:
        store.close()
        emulators.stop()


@dataclass
class Case:
    """One mistake: the command, what the product must answer, and how to set it up."""

    name: str
    what: str  # for the table
    args: list[str]
    code: int
    words: tuple[str, ...]
    env: Callable[[World], dict[str, str]] = lambda w: {}
    prepare: Callable[[World], Any] = lambda w: None
    max_lines: int = 2
    absent: tuple[str, ...] = ()  # never in the output (a password, the wrong diagnosis)
    kafka: bool = False  # needs a real broker with the topics
    timeout: float = 120.0


@dataclass
class Outcome:
    code: int | None  # None: killed at the timeout
    output: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]


def run(world_: World, case: Case, cli: list[str] | None = None,
        extra_env: dict[str, str] | None = None, timeout: float | None = None,
        stdout_only: bool = False) -> Outcome:
    """The case's command as a subprocess, stdout and stderr together as a terminal shows
    them (or stdout alone, for JSON)."""
    env = {**world_.env, **case.env(world_), **(extra_env or {})}
    started = time.monotonic()
    with subprocess.Popen([*(cli or CONTACTSYNC), *case.args], env=env, cwd=world_.tmp,
                          stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.DEVNULL if stdout_only else subprocess.STDOUT,
                          ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout or case.timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            code = None
    return Outcome(code, output, round(time.monotonic() - started, 1))


# --- the cases ---

def _broken_config(w: World) -> dict[str, str]:
    path = w.tmp / "broken.toml"
    path.write_text('bc_company = "CRONUS\ntopic_partitions = 6\n')  # an unclosed string
    return {"CONTACTSYNC_CONFIG": str(path)}


def _hang_bc(w: World) -> None:
    """Every BC request hangs (longer than the client waits); the answer never comes."""
    w.emulators.bc.inject_fault(FaultSpec(kind="latency", seconds=120, count=50))


def _hold_port(w: World) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    w.held = holder  # type: ignore[attr-defined]  # kept open until the world ends


def _held_port(w: World) -> dict[str, str]:
    return {"HELD_PORT": str(w.held.getsockname()[1])}  # type: ignore[attr-defined]


CASES: list[Case] = [
    Case("database_url_unparsable", "CONTACTSYNC_DATABASE_URL=not-a-url",
         ["users", "list"], 1, ("state store", "CONTACTSYNC_DATABASE_URL"),
         env=lambda w: {"CONTACTSYNC_DATABASE_URL": "not-a-url"}),
    Case("database_unreachable", "PostgreSQL URL, nothing listening",
         ["users", "list"], 1, ("state store", "CONTACTSYNC_DATABASE_URL", "127.0.0.1"),
         env=lambda w: {"CONTACTSYNC_DATABASE_URL":
                        f"postgresql://admin:s3cret@127.0.0.1:{closed_port()}/contactsync"},
         absent=("s3cret",)),
    Case("config_broken", "CONTACTSYNC_CONFIG names a file that is not TOML",
         ["users", "list"], 1, ("broken.toml", "not valid TOML"), env=_broken_config),
    Case("config_missing", "CONTACTSYNC_CONFIG names a file that does not exist",
         ["users", "list"], 1, ("missing.toml", "does not exist", "CONTACTSYNC_CONFIG"),
         env=lambda w: {"CONTACTSYNC_CONFIG": str(w.tmp / "missing.toml")}),
    Case("emulate_port_in_use", "`emulate --graph-port P`, P in use",
         ["emulate", "--graph-port", "HELD_PORT"], 1, ("cannot listen", "--graph-port"),
         prepare=_hold_port, env=_held_port, timeout=60),
    Case("kafka_unreachable", "`reconcile --user U`, no broker at KAFKA_BOOTSTRAP_SERVERS",
         ["reconcile", "--user", USER], 1, ("Kafka", "KAFKA_BOOTSTRAP_SERVERS")),
    Case("kafka_unreachable_dlq", "`dlq list`, no broker",
         ["dlq", "list"], 1, ("Kafka", "KAFKA_BOOTSTRAP_SERVERS")),
    Case("bc_unreachable", "`sync U`, nothing at CONTACTSYNC_BC_BASE_URL",
         ["sync", USER], 1, ("Business Central", "CONTACTSYNC_BC_BASE_URL", "not reachable"),
         env=lambda w: {"CONTACTSYNC_BC_BASE_URL":
                        f"http://127.0.0.1:{closed_port()}/v2.0/production/api/v2.0"},
         max_lines=6, absent=("NotSent",)),
    Case("graph_url_without_version", "`sync U`, Graph URL without /v1.0",
         ["sync", USER], 1, ("CONTACTSYNC_GRAPH_BASE_URL", "/v1.0"),
         env=lambda w: {"CONTACTSYNC_GRAPH_BASE_URL": w.emulators.graph_server.url}),
    Case("bc_hangs", "`sync U`, BC never answers (read timeout 2 s here)",
         ["sync", USER], 1, ("Business Central", "not answering", "retry 4 of 4"),
         prepare=_hang_bc, env=lambda w: {"CONTACTSYNC_HTTP_TIMEOUT": "2"}, max_lines=6,
         timeout=150),
    Case("sync_disabled_user", "`sync U` for a disabled user",
         ["sync", OFF], 1, ("disabled", "users enable", "--force")),
    Case("no_such_user_sync", "`sync typo`", ["sync", "nobody@contoso.test"], 1,
         ("no setup for user", "users list")),
    Case("no_such_user_reconcile", "`reconcile --user typo --inline`",
         ["reconcile", "--user", "nobody@contoso.test", "--inline"], 1,
         ("no setup for user", "users list")),
    Case("no_such_user_show", "`users show typo`", ["users", "show", "nobody@contoso.test"], 1,
         ("no setup for user", "users list")),
    Case("no_such_user_remove", "`users remove typo`",
         ["users", "remove", "nobody@contoso.test"], 1, ("no setup for user", "users list")),
    Case("no_such_user_enable", "`users enable typo`",
         ["users", "enable", "nobody@contoso.test"], 1, ("no setup for user", "users list")),
    Case("no_such_user_audit", "`audit --user typo`",
         ["audit", "--user", "nobody@contoso.test"], 1, ("no setup for user", "users list")),
    Case("reconcile_wait_no_applier", "`reconcile --user U --wait`, no applier running",
         ["reconcile", "--user", USER, "--wait", "--timeout", "60"], 1,
         ("no applier", "contactsync applier", "nothing was published"), kafka=True,
         timeout=90),
]


def by_name(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def measure(case: Case, tmp: Path, cli: list[str], kafka_env: dict[str, str],
            pythonpath: str = "") -> Outcome:
    with world(tmp, kafka_env) as w:
        case.prepare(w)
        extra = {"PYTHONPATH": pythonpath} if pythonpath else {}
        args = [a.replace("HELD_PORT", case.env(w).get("HELD_PORT", "")) for a in case.args]
        return run(w, Case(**{**case.__dict__, "args": args}), cli, extra)


def _table(before_dir: str | None) -> None:  # pragma: no cover - a report, not a test
    import tempfile

    from contactsync.kafka.topics import ensure_topics_at
    from contactsync.settings import load_settings

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    kafka_env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CONTACTSYNC_TOPIC_PREFIX": "admin17."}
    if bootstrap:
        ensure_topics_at(bootstrap, load_settings(topic_prefix="admin17.",
                                                  kafka_bootstrap_servers=bootstrap))
    before_cli = MODULE_CLI
    print("| case | before: lines / s / exit | after: lines / s / exit |")
    print("|---|---|---|")
    for case in CASES:
        if case.kafka and not bootstrap:
            continue
        cells = []
        runs = [(before_cli, before_dir)] if before_dir else []
        for cli, path in [*runs, (CONTACTSYNC, "")]:
            with tempfile.TemporaryDirectory() as tmp:
                out = measure(case, Path(tmp), cli, kafka_env if case.kafka else {}, path or "")
            code = "killed" if out.code is None else str(out.code)
            tb = ", traceback" if "Traceback" in out.output else ""
            cells.append(f"{len(out.lines)} / {out.seconds} / {code}{tb}")
        print(f"| {case.what} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", help="a checkout of the code before the change")
    _table(parser.parse_args().before)
