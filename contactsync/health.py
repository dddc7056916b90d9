"""Liveness, readiness and metrics over HTTP, for every role.

    GET /healthz   200 while the process serves HTTP (liveness)
    GET /readyz    200 when every component is usable, else 503 with what is not
    GET /metrics   Prometheus exposition (contactsync.metrics)

`READINESS` is the process's registry of components: a role adds the checks of what it needs
(the Kafka broker, the store) and the clients report the state of their credentials as they
use them. A role run alone with `--metrics-port P` serves these routes on P; `contactsync run`
serves them once for all its roles; the webhook also serves them on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from contactsync import metrics

if TYPE_CHECKING:  # the web stack loads with the HTTP parts, not for the clients' reports
    from starlette.applications import Starlette
    from starlette.routing import Route

    from contactsync.store import Store

Check = Callable[[], Awaitable[tuple[bool, str]]]


class Readiness:
    """Named components, each a check run on demand or a state reported by whoever uses it.

    Checks run concurrently and their answer is cached briefly, so an orchestrator probing
    every second costs nothing. Reports count only while a role watches (between its
    `add_check` and `clear`): a client used outside a role (a CLI command, a test) leaves no
    state behind for the next role of the process."""

    def __init__(self, *, cache_seconds: float = 2.0) -> None:
        self._checks: dict[str, Check] = {}
        self._reported: dict[str, tuple[bool, str]] = {}
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, bool, dict[str, str]] | None = None
        self._lock = threading.Lock()  # reports come from role threads and event loops
        self._watching = False

    def add_check(self, component: str, check: Check) -> None:
        with self._lock:
            self._checks[component] = check
            self._cached = None
            self._watching = True

    def report(self, component: str, ok: bool, detail: str) -> None:
        """The component's state as its user just saw it (e.g. a service refused our token)."""
        with self._lock:
            if not self._watching:
                return
            metrics.COMPONENT_READY.labels(component).set(1 if ok else 0)
            if self._reported.get(component, (None,))[0] != ok:
                self._cached = None
            self._reported[component] = (ok, detail)

    def clear(self) -> None:
        with self._lock:
            self._checks.clear()
            self._reported.clear()
            self._cached = None
            self._watching = False

    async def evaluate(self) -> tuple[bool, dict[str, str]]:
        """(all ready, {component: detail}); details of failing components start with "not"."""
        with self._lock:
            cached = self._cached
            checks = dict(self._checks)
            reported = dict(self._reported)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1], cached[2]
        results = await asyncio.gather(*(check() for check in checks.values()))
        states = dict(zip(checks, results, strict=True)) | reported
        for component, (ok, _detail) in states.items():
            metrics.COMPONENT_READY.labels(component).set(1 if ok else 0)
        ready = all(ok for ok, _ in states.values())
        details = {name: detail for name, (_ok, detail) in sorted(states.items())}
        with self._lock:
            self._cached = (time.monotonic() + self._cache_seconds, ready, details)
        return ready, details


READINESS = Readiness()


# --- Checks ---


def bootstrap_addresses(servers: str | Sequence[str]) -> list[tuple[str, int]]:
    """(host, port) pairs of a bootstrap list ("h1:9092,h2:9092" or a list of such)."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    addresses = []
    for server in items:
        host, _, port = str(server).strip().rpartition(":")
        if host and port.isdigit():
            addresses.append((host.strip("[]"), int(port)))
    return addresses


async def any_reachable(addresses: Sequence[tuple[str, int]], timeout: float = 1.0) -> bool:
    """Whether one of the addresses accepts a TCP connection within `timeout` seconds."""
    for host, port in addresses:
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


def kafka_check(bootstrap: str) -> Check:
    addresses = bootstrap_addresses(bootstrap)

    async def check() -> tuple[bool, str]:
        if await any_reachable(addresses):
            return True, "kafka reachable"
        return False, f"no Kafka broker of {bootstrap} accepts connections"

    return check


def store_check(store: Store) -> Check:
    from sqlalchemy import text

    def ping() -> None:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def check() -> tuple[bool, str]:
        try:
            await asyncio.wait_for(asyncio.to_thread(ping), 5.0)
        except Exception as exc:
            return False, f"not reachable: the store failed ({type(exc).__name__})"
        return True, "store reachable"

    return check


def register_role_checks(bootstrap: str | None, store: Store | None) -> None:
    """The checks every role needs: the broker it talks to, the store it reads."""
    if bootstrap:
        READINESS.add_check("kafka", kafka_check(bootstrap))
    if store is not None:
        READINESS.add_check("store", store_check(store))


# --- HTTP ---


def health_routes(
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, str]]]] = READINESS.evaluate,
    render: Callable[[], bytes] = lambda: metrics.render(metrics.REGISTRY),
) -> list[Route]:
    """/healthz, /readyz and /metrics; the webhook mounts them too, with its own extras."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        ready, details = await readiness()
        return JSONResponse({"status": "ready" if ready else "not_ready", "components": details},
                            200 if ready else 503)

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(render(), media_type=metrics.CONTENT_TYPE)

    return [Route("/healthz", healthz), Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint)]


def create_health_app() -> Starlette:
    from starlette.applications import Starlette

    return Starlette(routes=health_routes())


def serve_health(port: int, host: str = "0.0.0.0") -> Any:
    """The health app on `port` in a background thread; `.stop()` it when the role ends."""
    from contactsync.http_server import BackgroundServer

    return BackgroundServer(create_health_app(), host=host, port=port).start()
