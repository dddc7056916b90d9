"""Graph emulator fixtures: a real emulator on a loopback port, a tiny webhook receiver, and the
product's GraphClient pointed at the emulator. Import the `*_fixture` functions you use; the
fixtures are named `graph`, `receiver` and `client`."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from contactsync.clients.graph import GraphClient, GraphClientOptions
from contactsync.clients.resilience import BudgetLimits, RetryPolicy
from contactsync.emulators.graph import GraphEmulator, GraphEmulatorConfig
from contactsync.http_server import BackgroundServer


@dataclass
class GraphEnv:
    emu: GraphEmulator
    url: str  # server root; the API is at url + "/v1.0"

    @property
    def api(self) -> str:
        return self.url + "/v1.0"


@pytest.fixture(name="graph")
def graph_fixture() -> Iterator[GraphEnv]:
    emu = GraphEmulator(GraphEmulatorConfig.fast())
    server = BackgroundServer(emu.app).start()
    try:
        yield GraphEnv(emu, server.url)
    finally:
        server.stop()


@dataclass
class Receiver:
    """Records notifications; can refuse validation or fail the next N posts with 500."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)  # every item of every POST
    posts: int = 0
    fail_next: int = 0
    validate: bool = True
    validations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(list(self.received)):
                    return
            time.sleep(0.02)
        raise AssertionError(f"condition not met; received {self.received}")


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Receiver]:
    rec = Receiver()

    async def hook(request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            rec.validations += 1
            if not rec.validate:
                return PlainTextResponse("nope", status_code=403)
            return PlainTextResponse(token)  # decoded token, text/plain, 200 (reference 3.1)
        body = await request.json()
        with rec.lock:
            rec.posts += 1
            if rec.fail_next > 0:
                rec.fail_next -= 1
                return Response(status_code=500)
            rec.received.extend(body["value"])
        return Response(status_code=202)

    server = BackgroundServer(
        Starlette(
            routes=[
                Route("/hook", hook, methods=["POST"]),
                Route("/lifecycle", hook, methods=["POST"]),
            ]
        )
    ).start()
    rec.url = server.url
    try:
        yield rec
    finally:
        server.stop()


def fast_options(**kw: Any) -> GraphClientOptions:
    return GraphClientOptions(
        policy=RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05),
        limits=kw.pop("limits", BudgetLimits(4, 10_000, 600.0)),
        **kw,
    )


@pytest.fixture(name="client")
async def client_fixture(graph: GraphEnv) -> AsyncIterator[GraphClient]:
    c = GraphClient.create(graph.api + "/", options=fast_options(), timeout=10.0)
    try:
        yield c
    finally:
        await c.close()
