"""The one sync/async bridge: the roles run on the worker's thread, the Graph and BC clients
are async. One event loop per role, made and used in the role's thread (the clients bind to
the loop they were opened on), closed on the way out with the async generators it holds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._owns = loop is None
        self._thread: int | None = None if loop is None else threading.get_ident()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            self._owns = True
            self._thread = threading.get_ident()
        elif self._owns and self._thread != threading.get_ident():
            raise RuntimeError("an event loop of the bridge is used from another thread")
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to its end on the bridge's loop, in the calling (the role's) thread."""
        return self.loop.run_until_complete(coro)

    @property
    def open(self) -> bool:
        return self._loop is not None and not self._loop.is_closed()

    def close(self) -> None:
        """Close the loop if the bridge made it (after its async generators)."""
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed() or not self._owns:
            return
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
