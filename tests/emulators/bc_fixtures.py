"""Shared fixtures for the BC emulator and BC client tests: the emulator on a real socket, a
product BcClient against it, and a tiny webhook receiver (a real Starlette app on a real socket)
whose answers a test can script. Import the fixtures by name into a test module."""

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

from contactsync.clients.bc import BcClient
from contactsync.clients.resilience import BudgetLimits, RequestBudget, RetryPolicy
from contactsync.emulators.bc import BcEmulator, BcEmulatorConfig
from contactsync.http_server import BackgroundServer


@dataclass
class RunningBc:
    emulator: BcEmulator
    server: BackgroundServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def api(self) -> str:
        return f"{self.server.url}/v2.0/{self.emulator.config.environment}/api/v2.0"

    @property
    def contacts_url(self) -> str:
        return f"{self.api}/companies({self.emulator.company_id})/contacts"


def start_bc(config: BcEmulatorConfig | None = None) -> RunningBc:
    emu = BcEmulator(config or BcEmulatorConfig.for_tests())
    return RunningBc(emu, BackgroundServer(emu.app).start())


@pytest.fixture(scope="module")
def bc_module() -> Iterator[RunningBc]:
    running = start_bc()
    yield running
    running.server.stop()


@pytest.fixture
def bc(bc_module: RunningBc) -> RunningBc:
    """The module's emulator, reset to empty (and default config) for each test."""
    emu = bc_module.emulator
    fresh = BcEmulatorConfig.for_tests()
    for name in BcEmulatorConfig.model_fields:
        setattr(emu.config, name, getattr(fresh, name))
    emu.reset()
    return bc_module


async def make_client(
    running: RunningBc, *, policy: RetryPolicy | None = None,
    limits: BudgetLimits | None = None, **kwargs: Any,
) -> BcClient:
    return await BcClient.create(
        running.api, running.emulator.company_id,
        policy=policy or RetryPolicy.fast(),
        budget=RequestBudget(limits or BudgetLimits()), **kwargs,
    )


@pytest.fixture
async def client(bc: RunningBc) -> AsyncIterator[BcClient]:
    c = await make_client(bc)
    yield c
    await c.aclose()


# -- webhook receiver ---------------------------------------------------------------------------


@dataclass
class Receiver:
    """Records what BC sends. `handshake` decides the validation answer ("echo", "wrong",
    or an int status); `statuses` is a queue of statuses for notification POSTs (then 202)."""

    server: BackgroundServer | None = None
    handshake: str | int = "echo"
    statuses: list[int] = field(default_factory=list)
    validations: list[str] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/hook"

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return [item for b in self.batches for item in b["value"]]

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; received {self.batches!r}, answered {self.answered}")

    async def endpoint(self, request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            with self.lock:
                self.validations.append(token)
            if self.handshake == "echo":
                return PlainTextResponse(token)
            if self.handshake == "wrong":
                return PlainTextResponse("not-the-token")
            return PlainTextResponse("no", status_code=int(self.handshake))
        body = await request.json()
        with self.lock:
            status = self.statuses.pop(0) if self.statuses else 202
            self.answered.append(status)
            if 200 <= status < 300:
                self.batches.append(body)
        return Response(status_code=status)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hook", rec.endpoint, methods=["POST", "GET"])])
    rec.server = BackgroundServer(app).start()
    yield rec
    rec.server.stop()
