"""Where the pipeline process's CPU goes, per role (pipeline_load).

Every role runs in threads of the one process: its own thread (named after the role), its Kafka
clients' threads (named after their client id: `contactsync-applier-network-thread`,
`kafka-io-...contactsync-router`), the webhook's server thread. `thread_cpu` reads each
thread's CPU time from /proc (user + system), `by_role` adds them up per role, so the figures
are CPU, not wall time, and need no profiler.

BENCH_PYSPY=1 also samples the process with py-spy (a dev tool: `pip install py-spy`) while
each rate runs, only threads holding the GIL (running Python), and prints per role where that
CPU went, in ms per propagated change (`summarise`): by package, by library (the innermost
library on the stack, the standard library it calls counted as its cost: the floor a library
sets), and the heaviest functions; then every role's GIL time by library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

ROLES = ("webhook", "router", "applier", "bc-changes", "subscriptions", "reconcile")
DRIVER = "bench driver"  # this benchmark's own main thread (edits, counters)
_TICK = os.sysconf("SC_CLK_TCK")


def role_of(thread_name: str, webhook_thread: str = "") -> str:
    """The role a thread works for, by its name (client ids carry the role's name)."""
    if thread_name == "MainThread":
        return DRIVER
    if thread_name == webhook_thread or "webhook" in thread_name:
        return "webhook"
    for role in ROLES:
        if role in thread_name:
            return role
    return "other"


def thread_cpu() -> dict[int, tuple[str, float]]:
    """Native thread id -> (name, CPU seconds so far) for this process's live threads."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        tid = int(task.name)
        cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        name = names.get(tid) or (task / "comm").read_text().strip()
        out[tid] = (name, cpu)
    return out


def by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
            webhook_thread: str = "") -> dict[str, float]:
    """CPU seconds per role between two `thread_cpu` readings (a thread that ended between
    them is lost; one started between them counts from zero)."""
    out: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        role = role_of(name, webhook_thread)
        out[role] = out.get(role, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    return out


class PySpy:
    """`py-spy record` of this process while one rate runs (BENCH_PYSPY=1)."""

    RATE_HZ = 200

    def __init__(self, label: str) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out = Path(os.environ.get("TMPDIR", "/tmp")) / f"pipeline-pyspy-{label}.txt"
        self._proc = subprocess.Popen(
            [exe, "record", "--pid", str(os.getpid()), "--rate", str(self.RATE_HZ),
             "--format", "raw", "--threads", "--gil", "--nonblocking", "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> Path:
        self._proc.send_signal(2)  # py-spy writes its file on SIGINT
        self._proc.wait(timeout=60)
        return self.out


def summarise(raw: Path, landed: int, webhook_thread: str = "", top: int = 8) -> str:
    """Per role, from a py-spy raw file: CPU ms per propagated change, where it was spent by
    package (the frame on top of the stack: the code burning it), and the heaviest functions
    of ours and the libraries' (inclusive: with what they call)."""
    if not raw.exists() or not landed:
        return "    (no py-spy samples)"
    per_sample_ms = 1000.0 / PySpy.RATE_HZ / landed
    total: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = {}
    package: dict[str, Counter[str]] = {}
    library: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # a frame name with a space in it, cut by py-spy's raw format
        frames = stack.split(";")
        role = role_of(frames[0].split(": ", 1)[-1], webhook_thread)
        n = int(count)
        total[role] += n
        names = {_frame(frame) for frame in frames[1:]}
        inclusive.setdefault(role, Counter()).update(dict.fromkeys(names, n))
        package.setdefault(role, Counter())[_package(frames[-1])] += n
        library.setdefault(role, Counter())[_library(frames[1:])] += n
    lines = []
    for role, samples in total.most_common():
        if samples * per_sample_ms < 0.05:
            continue
        lines.append(f"    {role}: {samples * per_sample_ms:.2f} ms/change holding the GIL; "
                     "by package: " + ", ".join(
                         f"{name} {n * per_sample_ms:.2f}"
                         for name, n in package[role].most_common(top)))
        lines.append("      by library (the innermost on the stack, stdlib it calls "
                     "included): " + ", ".join(f"{name} {n * per_sample_ms:.2f}"
                                               for name, n in library[role].most_common(top)))
        heavy = [(f, n) for f, n in inclusive[role].most_common()
                 if n < samples * 0.9 and not f.startswith(_BOILERPLATE)]
        lines.append("      heaviest: " + ", ".join(
            f"{name} {n * per_sample_ms:.2f}" for name, n in heavy[:top]))
    every = sum(library.values(), Counter())
    lines.append(f"    all roles: {every.total() * per_sample_ms:.2f} ms/change holding the GIL; "
                 "by library: " + ", ".join(f"{name} {n * per_sample_ms:.2f}"
                                            for name, n in every.most_common(top + 2)))
    return "\n".join(lines)


_BOILERPLATE = ("Thread.", "BaseEventLoop.", "_run_module", "_run_code", "<module>",
                "Handle._run", "Pipeline.", "run (", "Runner.run", "Task.", "Worker.run")


# Standard library modules a library calls: their time is that library's (a kafka-python
# thread's select and locks are kafka-python's cost).
_STDLIB = frozenset({
    "threading", "selectors", "socket", "ssl", "asyncio", "contextlib", "concurrent", "weakref",
    "enum", "collections", "functools", "typing", "abc", "import machinery", "uuid", "logging",
    "queue", "<string>", "re", "copy", "dataclasses", "datetime", "json", "random", "hashlib",
    "struct", "urllib", "warnings", "inspect", "types", "email", "http", "ipaddress",
    "_weakrefset"})
_LIBRARIES = {"kafka": "kafka-python", "httpx": "http", "httpcore": "http", "anyio": "http",
              "h11": "http", "sniffio": "http", "urllib3": "http", "kiota_http": "msgraph-sdk",
              "kiota_abstractions": "msgraph-sdk", "kiota_serialization_json": "msgraph-sdk",
              "msgraph": "msgraph-sdk", "msgraph_core": "msgraph-sdk", "starlette": "starlette",
              "uvicorn": "uvicorn", "sqlalchemy": "sqlalchemy", "pydantic": "pydantic",
              "pydantic_core": "pydantic", "contactsync": "ours", "structlog": "structlog",
              "opentelemetry": "opentelemetry", "trace": "opentelemetry",
              "propagate": "opentelemetry", "prometheus_client": "prometheus"}


def _library(frames: list[str]) -> str:
    """Whose cost a sample is: the innermost frame outside the standard library it calls."""
    for frame in reversed(frames):
        package = _package(frame)
        if package.startswith("<codegen"):  # kafka-python's generated protocol code
            return "kafka-python"
        if package not in _STDLIB:
            return _LIBRARIES.get(package, package)
    return _package(frames[-1]) if frames else "?"


def _frame(frame: str) -> str:
    """`fn (path/to/module.py:123)` -> `fn (module.py)`: one entry per function."""
    fn, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{fn} ({Path(path).name})"


def _package(frame: str) -> str:
    """The package (or stdlib module) a frame's code belongs to."""
    path = frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    if path.startswith("<frozen"):
        return "import machinery"
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")
