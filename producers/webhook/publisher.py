"""Async bridge to kafka-python's KafkaProducer: send a request's messages, await every ack.

`producer.send()` can block (waiting for topic metadata or buffer space, up to max_block_ms), so
it never runs on the event loop: one dedicated thread calls it, in order. The acks arrive on the
producer's I/O thread; a small gate counts them there and wakes the event loop once, through
`loop.call_soon_threadsafe`, when the last one is in or the first one failed. Many concurrent
requests share the producer's batches (linger_ms), so acks are batched for free.

A request that is not acked within `timeout` seconds gets `PublishUnavailable`; the app answers
503 and the sender retries. Messages already handed over may still be delivered later: that is
a duplicate hint, which the pipeline tolerates (docs/architecture.md 1, 9); losing one would not be.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from contactsync.health import bootstrap_addresses
from contactsync.logs import get_logger


def _log() -> Any:
    # Resolved per call: a logger bound at import would miss configure_logging (and redaction).
    return get_logger("contactsync.webhook.publisher")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()  # the trace context, when tracing is on


class PublishUnavailable(Exception):
    """The broker did not acknowledge the messages in time (or refused them): retry later."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause


class ProducerHolder:
    """The producer the app uses: given by the caller (borrowed) or built here (owned).

    An owned producer is built on a daemon thread, retrying until a broker answers, so the app
    starts (and answers /healthz, and 503 on notifications) even while Kafka is down.
    """

    def __init__(
        self,
        producer: KafkaProducer | None = None,
        factory: Callable[[], KafkaProducer] | None = None,
        *,
        warm_topics: Sequence[str] = (),
        retry_interval: float = 2.0,
    ) -> None:
        if producer is None and factory is None:
            raise ValueError("give a producer or a factory")
        self._producer = producer
        self._factory = factory
        self.owned = producer is None
        self._warm_topics = tuple(warm_topics)
        self._retry_interval = retry_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def producer(self) -> KafkaProducer | None:
        return self._producer

    def start(self) -> None:
        self._thread = threading.Thread(target=self._connect, name="webhook-producer", daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        while self._producer is None and not self._stop.is_set():
            try:
                assert self._factory is not None
                self._producer = self._factory()
            except Exception as exc:
                _log().warning("kafka producer not ready; retrying", error=exc)
                self._stop.wait(self._retry_interval)
        # Fetch topic metadata now, so the first request does not wait for it.
        for topic in self._warm_topics:
            if self._stop.is_set() or self._producer is None:
                return
            try:
                self._producer.partitions_for(topic)
            except Exception as exc:
                _log().warning("no metadata for topic yet", topic=topic, error=exc)

    def bootstrap_addresses(self) -> list[tuple[str, int]]:
        if self._producer is None:
            return []
        return bootstrap_addresses(self._producer.config.get("bootstrap_servers", []))

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self.owned and self._producer is not None:
            self._producer.close(timeout=timeout)


class _AckGate:
    """Counts acks on the producer's thread; resolves the asyncio future once."""

    __slots__ = ("_done", "_lock", "_loop", "_pending", "_waiter")

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]):
        self._pending = count
        self._loop = loop
        self._waiter = waiter
        self._lock = threading.Lock()
        self._done = False

    def ok(self, _metadata: Any) -> None:
        with self._lock:
            if self._done:
                return
            self._pending -= 1
            if self._pending > 0:
                return
            self._done = True
        self._resolve(None)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._resolve(error)

    def _resolve(self, error: BaseException | None) -> None:
        # RuntimeError: the loop is closed, nobody waits any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle, self._waiter, error)


def _settle(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if waiter.done():  # timed out (cancelled) already
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


class KafkaPublisher:
    def __init__(self, holder: ProducerHolder, *, timeout: float = 2.0) -> None:
        self.holder = holder
        self.timeout = timeout
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-send")
        self.last_failure_at: float | None = None
        self.last_success_at: float | None = None

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Return once the broker acknowledged every message (acks=all); else raise."""
        if not messages:
            return
        producer = self.holder.producer
        if producer is None:
            self._failed()
            raise PublishUnavailable("no_producer", "not connected to Kafka yet")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        gate = _AckGate(len(messages), loop, waiter)
        deadline = time.monotonic() + self.timeout
        try:
            self._sender.submit(_send_all, producer, messages, gate, deadline)
        except RuntimeError as exc:  # executor shut down: the app is stopping
            raise PublishUnavailable("stopping", str(exc)) from None
        try:
            await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            self._failed()
            raise PublishUnavailable("timeout", f"no ack within {self.timeout:.1f}s") from None
        except Exception as exc:
            self._failed()
            raise PublishUnavailable("error", f"{type(exc).__name__}: {exc}") from None
        self.last_success_at = time.monotonic()

    def _failed(self) -> None:
        self.last_failure_at = time.monotonic()

    def recently_failing(self, window: float = 5.0) -> bool:
        """True when the last publish failed within `window` s and none succeeded since."""
        failed = self.last_failure_at
        if failed is None or time.monotonic() - failed > window:
            return False
        return self.last_success_at is None or self.last_success_at < failed

    def close(self) -> None:
        self._sender.shutdown(wait=False, cancel_futures=True)


def _send_all(
    producer: KafkaProducer, messages: Sequence[OutgoingMessage], gate: _AckGate, deadline: float
) -> None:
    # Queued behind a send that blocked (broker down): the request has been answered 503
    # already, so sending now would only make a duplicate.
    if time.monotonic() >= deadline:
        gate.fail(PublishUnavailable("timeout", "expired before it was sent"))
        return
    for message in messages:
        try:
            future = producer.send(message.topic, value=message.value, key=message.key,
                                   headers=list(message.headers) or None)
        except Exception as exc:
            gate.fail(exc)
            return
        future.add_callback(gate.ok)
        future.add_errback(gate.fail)
