"""Faults an emulator can be told to inject, through its admin API.

Each fault is consumed as it fires, so a test states exactly how many requests fail:
`{"kind": "status", "status": 503, "count": 3, "route": "contacts"}` fails the next three
requests whose path contains "contacts" with 503. Latency applies a delay instead.
`drop_response` lets the request take effect and then answers `status` instead of the real
response (a write that landed but whose answer was lost: the client must not repeat it blindly).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import BaseModel, Field


class FaultSpec(BaseModel):
    kind: str = Field(pattern="^(status|latency|drop_response)$")
    status: int = 503
    count: int = Field(default=1, ge=1)
    route: str = Field(default="", description="substring of the path; empty = every path")
    method: str = Field(default="", description="HTTP method; empty = every method")
    seconds: float = Field(default=0.0, ge=0, le=120)
    retry_after: int | None = None


@dataclass
class _Armed:
    spec: FaultSpec
    remaining: int


class FaultInjector:
    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def add(self, spec: FaultSpec) -> None:
        self._armed.append(_Armed(spec, spec.count))

    def clear(self) -> None:
        self._armed.clear()

    def pending(self) -> int:
        return sum(a.remaining for a in self._armed)

    async def apply(self, method: str, path: str) -> FaultSpec | None:
        """Sleep for latency faults; return a status or drop_response fault, or None.
        The caller handles drop_response by running the request, then answering `status`."""
        for armed in list(self._armed):
            spec = armed.spec
            if spec.route and spec.route not in path:
                continue
            if spec.method and spec.method.upper() != method.upper():
                continue
            armed.remaining -= 1
            if armed.remaining <= 0:
                self._armed.remove(armed)
            if spec.kind == "latency":
                await asyncio.sleep(spec.seconds)
                continue
            return spec
        return None
