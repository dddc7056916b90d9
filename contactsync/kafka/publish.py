"""Publishing, written once: what a role wants on a topic (`Outgoing`), and the one
send-then-await-acks the worker and the roles' own passes share (`Publisher`).

Handlers do not publish: they return a `Publish` (the messages, and what to do once every one
of them is acked); the worker sends each poll's messages as the handlers return them, waits for
the broker's acks ONCE per poll, and commits only past records whose messages are on the
broker (docs/architecture.md 9). A producer is idempotent with acks=all (`kafka.io`), so a
message acked is on the broker once, in order per partition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import BaseModel

from contactsync.errors import KafkaUnavailable
from contactsync.schemas.envelope import encode, wrap

SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: the payload is wrapped in the envelope on the way out."""

    topic: str  # the full topic name (prefixed)
    key: str
    payload: BaseModel
    trace_id: str | None = None
    event_id: str | None = None
    headers: list[tuple[str, bytes]] | None = None  # the trace context

    def value(self) -> bytes:
        return encode(wrap(self.payload, trace_id=self.trace_id, event_id=self.event_id))


@dataclass
class Publish:
    """What a handler returns: its messages, and `then`, called once every one is acked."""

    messages: list[Outgoing] = field(default_factory=list)
    then: Callable[[], object] | None = None


def carrying(error: BaseException, publish: Publish) -> BaseException:
    """`error`, carrying the messages of the work done before it: the worker publishes them
    anyway (that work happened), then retries or dead-letters the group as the error says."""
    error.publish = publish  # type: ignore[attr-defined]
    return error


def carried(error: BaseException) -> Publish | None:
    found = getattr(error, "publish", None)
    return found if isinstance(found, Publish) else None


class Publisher:
    """Sends on one producer; `publish` waits for the acks (a publish that returned is on the
    broker). Every failure of the broker is a `KafkaUnavailable` (retryable)."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer

    def send(self, message: Outgoing) -> Any:
        try:
            return self.producer.send(message.topic, value=message.value(),
                                      key=message.key.encode(), headers=message.headers)
        except KafkaError as exc:
            raise KafkaUnavailable(f"could not publish to {message.topic}: {exc}") from exc

    def await_acks(self, futures: Sequence[Any]) -> list[Any]:
        """Flush once, then each future's metadata, in order."""
        if not futures:
            return []
        try:
            self.producer.flush(timeout=SEND_TIMEOUT_S)
            return [future.get(timeout=SEND_TIMEOUT_S) for future in futures]
        except KafkaError as exc:
            raise KafkaUnavailable(f"the broker did not acknowledge: {exc}") from exc

    def publish(self, messages: Sequence[Outgoing]) -> list[Any]:
        """Send every message, then wait for every ack; the records' metadata in order."""
        return self.await_acks([self.send(m) for m in messages])
