"""What the worker tests share: a generous wait-until, commands to produce, their reasons."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer

from contactsync.kafka.io import make_consumer, make_producer
from contactsync.kafka.topics import SYNC_COMMANDS, group_name, topic_name
from contactsync.kafka.worker import WorkRecord
from contactsync.schemas.envelope import encode, wrap
from contactsync.schemas.messages import CommandKind, SyncCommand
from contactsync.settings import Settings

WAIT_S = 90.0  # generous: a wait-until, never a timing assertion


def until(done: Callable[[], bool], what: str, step: Callable[[], object] | None = None) -> None:
    """Until `done()`, calling `step` (or sleeping a little) in between; fails past WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"not within {WAIT_S:.0f} s: {what}"
        if step is not None:
            step()
        else:
            time.sleep(0.1)


def produce(settings: Settings, reasons: Sequence[str], partition: int | None = 0) -> None:
    """Sync commands for user "u", one per reason, on sync.commands."""
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        for reason in reasons:
            value = encode(wrap(SyncCommand(user_id="u", kind=CommandKind.SYNC, reason=reason)))
            producer.send(topic_name(settings, SYNC_COMMANDS), value=value, key=b"u",
                          partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def other_member(settings: Settings, group: str, **config: Any) -> KafkaConsumer:
    """A plain consumer in the role group `group` holding sync.commands' partitions, which
    then stops polling: it stays a member (its heartbeats go on) without ever rejoining."""
    other = make_consumer(settings, group_name(settings, group), client_id="other", **config)
    topic = topic_name(settings, SYNC_COMMANDS)
    other.partitions_for_topic(topic)  # known before its join: the leader assigns them all
    other.subscribe([topic])
    until(lambda: bool(other.assignment()), "the other member's partitions",
          lambda: other.poll(timeout_ms=200))
    return other


def reasons(records: Sequence[WorkRecord]) -> list[str]:
    return [r.payload.reason for r in records]
