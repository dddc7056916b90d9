"""The dead-letter topic: writing to it (with all it takes to replay), reading it, replaying.

A dead-letter record is a `deadletter` envelope (schemas.messages.DeadLetter: reason, error type,
attempts, source topic/partition/offset, key, value and headers as text). The Kafka record
itself keeps the original key and headers as they were, so a replay restores them byte for
byte; a value that is not UTF-8 also travels base64-encoded in the `RAW_VALUE_HEADER` header.

Replays are recorded in Kafka, next to the dead letters: the consumer group `replay_group()`
commits, per dead-letter partition, the offset below which everything is replayed (or was
unreadable and skipped), and in the commit's metadata the replayed offsets above it (a JSON
list; replays out of order leave a few). A second replay of the same dead letter is refused
unless forced. Two replays running at the same time are not coordinated.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kafka import KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from contactsync import metrics
from contactsync.kafka.io import KafkaTarget, make_consumer
from contactsync.kafka.topics import group_name
from contactsync.logs import redact_text
from contactsync.schemas.envelope import MessageError, decode, encode, wrap
from contactsync.schemas.messages import DeadLetter
from contactsync.settings import Settings

RAW_VALUE_HEADER = "contactsync.dlq.raw-value-b64"
REPLAYED_FROM_HEADER = "contactsync.replayed-from"
_OWN_HEADERS = (RAW_VALUE_HEADER,)
MAX_REASON = 2000

Headers = list[tuple[str, bytes]]


class SourceRecord(Protocol):
    """What a dead letter needs of the failed record (kafka-python's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "backslashreplace") if raw is not None else ""


def _is_utf8(raw: bytes | None) -> bool:
    if raw is None:
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build_dead_letter(
    record: SourceRecord, *, reason: str, error_type: str, attempts: int, failed_at: datetime,
    first_failed_at: datetime | None = None,
) -> tuple[bytes | None, bytes, Headers]:
    """(key, value, headers) of the dead-letter record for `record`."""
    headers = list(record.headers or [])
    letter = DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=_text(record.key) if record.key is not None else None,
        value=_text(record.value),
        reason=redact_text(reason)[:MAX_REASON],
        error_type=error_type,
        attempts=attempts,
        failed_at=failed_at,
        first_failed_at=first_failed_at or failed_at,
        headers={name: _text(value) for name, value in headers},
    )
    if not _is_utf8(record.value):
        assert record.value is not None
        headers.append((RAW_VALUE_HEADER, base64.b64encode(record.value)))
    return record.key, encode(wrap(letter)), headers


class DeadLetterSink:
    """Sends dead letters with an idempotent producer and waits for the broker's ack."""

    def __init__(self, producer: KafkaProducer, topic: str, *, ack_timeout: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.ack_timeout = ack_timeout

    def send(self, record: SourceRecord, *, reason: str, error_type: str, attempts: int,
             first_failed_at: datetime | None = None) -> None:
        """Returns once the dead letter is on the broker (acks=all); raises otherwise."""
        key, value, headers = build_dead_letter(
            record, reason=reason, error_type=error_type, attempts=attempts,
            failed_at=datetime.now(UTC), first_failed_at=first_failed_at,
        )
        future = self.producer.send(self.topic, value=value, key=key, headers=headers)
        future.get(timeout=self.ack_timeout)
        metrics.DEADLETTERS.labels(error_type).inc()  # the type: bounded, unlike the message


# --- Reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterEntry:
    partition: int  # where the dead letter itself sits in the dead-letter topic
    offset: int
    timestamp_ms: int
    letter: DeadLetter | None  # None: the record is not a readable dead letter
    problem: str  # why `letter` is None
    original_key: bytes | None
    original_headers: Headers = field(default_factory=list)
    raw_value_b64: bytes | None = None
    replayed: bool = False

    @property
    def original_value(self) -> bytes | None:
        if self.raw_value_b64 is not None:
            return base64.b64decode(self.raw_value_b64)
        return self.letter.value.encode() if self.letter is not None else None

    def summary(self) -> dict[str, Any]:
        letter = self.letter
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "failed_at": (letter.failed_at.isoformat() if letter else
                          datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat()),
            "first_failed_at": (
                (letter.first_failed_at or letter.failed_at).isoformat() if letter else None),
            "source_topic": letter.source_topic if letter else None,
            "source_partition": letter.partition if letter else None,
            "source_offset": letter.offset if letter else None,
            "key": letter.key if letter else None,
            "reason": letter.reason if letter else f"unreadable dead letter: {self.problem}",
            "error_type": letter.error_type if letter else "",
            "attempts": letter.attempts if letter else 0,
            "replayed": self.replayed,
        }


def _entry(record: Any) -> DeadLetterEntry:
    headers: Headers = list(record.headers or [])
    raw_b64 = next((v for k, v in headers if k == RAW_VALUE_HEADER), None)
    original_headers = [(k, v) for k, v in headers if k not in _OWN_HEADERS]
    letter: DeadLetter | None = None
    problem = ""
    try:
        envelope = decode(record.value)
        if isinstance(envelope.payload, DeadLetter):
            letter = envelope.payload
        else:
            problem = f"a {envelope.type} message, not a dead letter"
    except MessageError as exc:
        problem = str(exc)
    return DeadLetterEntry(
        partition=record.partition, offset=record.offset, timestamp_ms=record.timestamp,
        letter=letter, problem=problem, original_key=record.key,
        original_headers=original_headers, raw_value_b64=raw_b64,
    )


def read_dead_letters(
    target: KafkaTarget, topic: str, *, timeout: float = 30.0
) -> list[DeadLetterEntry]:
    """Every record of the dead-letter topic, read from the beginning by a group-less consumer
    (nothing is committed), in (partition, offset) order."""
    consumer = make_consumer(target, None, client_id="contactsync-dlq-reader")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends: dict[Any, int] = consumer.end_offsets(tps)
        entries: list[DeadLetterEntry] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout:.0f}s")
            for batch in consumer.poll(timeout_ms=500).values():
                entries.extend(_entry(r) for r in batch if r.offset < ends[TopicPartition(
                    r.topic, r.partition)])
        return sorted(entries, key=lambda e: (e.partition, e.offset))
    finally:
        consumer.close(autocommit=False)


# --- Replay ledger ---------------------------------------------------------------------------


def replay_group(settings: Settings) -> str:
    return group_name(settings, "contactsync-dlq-replayer")


@dataclass
class _PartitionLedger:
    position: int = 0  # everything below is replayed (or skipped)
    above: set[int] = field(default_factory=set)  # replayed offsets at or above `position`

    def has(self, offset: int) -> bool:
        return offset < self.position or offset in self.above

    def add(self, offset: int) -> None:
        if offset >= self.position:
            self.above.add(offset)
        while self.position in self.above:
            self.above.remove(self.position)
            self.position += 1


class ReplayLedger:
    """The replayer group's committed offsets (+ metadata): which dead letters were replayed."""

    def __init__(self, target: KafkaTarget, group_id: str, topic: str) -> None:
        self.topic = topic
        self._consumer = make_consumer(target, group_id, client_id="contactsync-dlq-replayer")
        self._ledgers: dict[int, _PartitionLedger] = {}

    def load(self, partitions: Sequence[int]) -> None:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self._consumer.assign(tps)
        for tp in tps:
            committed = self._consumer.committed(tp, metadata=True)
            ledger = _PartitionLedger()
            if committed is not None and committed.offset >= 0:
                ledger.position = committed.offset
                try:
                    ledger.above = {int(o) for o in json.loads(committed.metadata or "[]")}
                except (ValueError, TypeError):
                    ledger.above = set()
            self._ledgers[tp.partition] = ledger

    def is_replayed(self, partition: int, offset: int) -> bool:
        return self._ledgers.get(partition, _PartitionLedger()).has(offset)

    def mark(self, partition: int, offset: int) -> None:
        """Record one dead letter as done, committed at once (a crash loses no record of it)."""
        ledger = self._ledgers.setdefault(partition, _PartitionLedger())
        ledger.add(offset)
        metadata = json.dumps(sorted(ledger.above), separators=(",", ":"))
        self._consumer.commit({
            TopicPartition(self.topic, partition): OffsetAndMetadata(ledger.position, metadata, -1)
        })

    def close(self) -> None:
        self._consumer.close(autocommit=False)


@dataclass(frozen=True)
class ReplayOutcome:
    entry: DeadLetterEntry
    status: str  # replayed | already_replayed | unreadable
    target: str = ""


def replay_entries(
    entries: Sequence[DeadLetterEntry],
    ledger: ReplayLedger,
    producer: KafkaProducer,
    *,
    to_topic: str | None = None,
    force: bool = False,
    ack_timeout: float = 30.0,
) -> list[ReplayOutcome]:
    """Re-publish each dead letter's original key, value and headers to its source topic (or
    `to_topic`), wait for the ack, then record it in the ledger. Unreadable ones are recorded
    as skipped so they do not hold the ledger's position back."""
    outcomes: list[ReplayOutcome] = []
    for entry in entries:
        if ledger.is_replayed(entry.partition, entry.offset) and not force:
            outcomes.append(ReplayOutcome(entry, "already_replayed"))
            continue
        if entry.letter is None:
            ledger.mark(entry.partition, entry.offset)
            outcomes.append(ReplayOutcome(entry, "unreadable"))
            continue
        target = to_topic or entry.letter.source_topic
        headers = [(k, v) for k, v in entry.original_headers if k != REPLAYED_FROM_HEADER]
        headers.append((REPLAYED_FROM_HEADER,
                        f"{ledger.topic}:{entry.partition}:{entry.offset}".encode()))
        future = producer.send(target, value=entry.original_value, key=entry.original_key,
                               headers=headers)
        future.get(timeout=ack_timeout)
        ledger.mark(entry.partition, entry.offset)
        outcomes.append(ReplayOutcome(entry, "replayed", target))
    return outcomes


def mark_replayed(
    entries: Sequence[DeadLetterEntry], ledger: ReplayLedger
) -> list[DeadLetterEntry]:
    """The entries with `replayed` filled in from the ledger."""
    return [
        dataclasses.replace(e, replayed=ledger.is_replayed(e.partition, e.offset))
        for e in entries
    ]
