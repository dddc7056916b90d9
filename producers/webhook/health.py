"""Readiness: can the webhook hand notifications to Kafka right now?

Cheap and cached briefly, so an orchestrator probing every second costs nothing: the producer
exists, publishing has not just failed, and a broker address accepts a TCP connection.
"""

from __future__ import annotations

import asyncio
import time

from contactsync.health import READINESS, any_reachable
from contactsync.producers.webhook.publisher import KafkaPublisher, ProducerHolder


class ReadinessProbe:
    def __init__(
        self,
        holder: ProducerHolder,
        publisher: KafkaPublisher,
        *,
        cache_seconds: float = 2.0,
        connect_timeout: float = 1.0,
    ) -> None:
        self._holder = holder
        self._publisher = publisher
        self._cache_seconds = cache_seconds
        self._connect_timeout = connect_timeout
        self._cached: tuple[float, bool, str] | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> tuple[bool, str]:
        async with self._lock:  # concurrent probes share one check
            now = time.monotonic()
            if self._cached is not None and self._cached[0] > now:
                return self._cached[1], self._cached[2]
            ready, detail = await self._evaluate()
            self._cached = (time.monotonic() + self._cache_seconds, ready, detail)
            return ready, detail

    async def _evaluate(self) -> tuple[bool, str]:
        if self._holder.producer is None:
            return False, "not connected to Kafka yet"
        if self._publisher.recently_failing():
            return False, "publishing to Kafka failed just now"
        if await any_reachable(self._holder.bootstrap_addresses(), self._connect_timeout):
            return True, "kafka reachable"
        return False, "no Kafka broker accepts connections"

    async def components(self) -> tuple[bool, dict[str, str]]:
        """The webhook's producer as component "kafka", with the process's other components."""
        ready, detail = await self.check()
        others_ready, others = await READINESS.evaluate()
        return ready and others_ready, others | {"kafka": detail}
