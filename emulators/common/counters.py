"""Request counters by method and route template: the benchmarks count API calls with them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send


class RequestCounters:
    def __init__(self) -> None:
        self.by_route: Counter[tuple[str, str]] = Counter()
        self.by_status: Counter[int] = Counter()

    def record(self, method: str, route: str, status: int) -> None:
        self.by_route[(method, route)] += 1
        self.by_status[status] += 1

    def reset(self) -> None:
        self.by_route.clear()
        self.by_status.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_route.values()),
            "by_route": [
                {"method": m, "route": r, "count": n} for (m, r), n in sorted(self.by_route.items())
            ],
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
        }


class CountingMiddleware:
    """Counts every request outside `/_emulator` by method and matched route template."""

    def __init__(self, app: ASGIApp, counters: RequestCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            await self.app(scope, receive, send)
            return
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                template = getattr(scope.get("route"), "path", None) or "<unmatched>"
                self.counters.record(scope["method"], template, status)

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Count before the client can have the whole answer: a test that reads the
                # counters (or resets them) right after its call must see this request.
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record()
