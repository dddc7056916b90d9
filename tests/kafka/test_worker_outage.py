"""A worker meets a broker outage (the session's local broker, stopped and started on the same
address): it keeps polling through it and consumes what is produced once the broker is back."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

import pytest
from kafka.structs import MemberState
from structlog.testing import capture_logs

from contactsync.kafka.io import make_consumer, make_producer
from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at, group_name, topic_name
from contactsync.kafka.worker import WorkRecord, build_worker
from contactsync.schemas.envelope import encode, wrap
from contactsync.schemas.messages import CommandKind, SyncCommand
from contactsync.settings import Settings
from tests.kafka_fixtures import KafkaHandle

pytestmark = pytest.mark.kafka

WAIT_S = 90.0  # generous: a wait-until, never a timing assertion


def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"not within {WAIT_S:.0f} s: {what}"
        time.sleep(0.1)


def _reasons(records: Sequence[WorkRecord]) -> list[str]:
    return [r.payload.reason for r in records]


def _produce_after(settings: Settings) -> None:
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        value = encode(wrap(SyncCommand(user_id="u", kind=CommandKind.SYNC, reason="after")))
        producer.send(topic_name(settings, SYNC_COMMANDS), value=value, key=b"u")
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def test_a_worker_mid_join_when_the_broker_stops_consumes_once_it_is_back(
        kafka: KafkaHandle, kafka_settings: Settings):
    """The evidence's shape: the worker's JoinGroup is pending (another member holds the
    rebalance: it stopped polling) when the broker stops; that member is gone meanwhile (it
    could not leave: no coordinator), the broker comes back on the same address."""
    if kafka.local is None:
        pytest.skip(f"cannot stop a {kafka.kind} broker from the tests")
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    group = f"g-{uuid.uuid4().hex[:8]}"
    # A short session: once the broker is back it drops the departed member within seconds.
    other = make_consumer(kafka_settings, group_name(kafka_settings, group), client_id="other",
                          session_timeout_ms=6000, heartbeat_interval_ms=1000)
    other.subscribe([topic_name(kafka_settings, SYNC_COMMANDS)])
    deadline = time.monotonic() + WAIT_S
    while not other.assignment():
        assert time.monotonic() < deadline, "the other member never got partitions"
        other.poll(timeout_ms=200)
    handled: list[str] = []
    worker = build_worker(kafka_settings, group, [SYNC_COMMANDS],
                          lambda records: handled.extend(_reasons(records)),
                          group_instance_id="mid-join")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    try:
        thread.start()
        _until(lambda: worker.consumer.group_metadata().state is MemberState.REBALANCING,
               "the worker's join pending")
        kafka.local.down()
        other.close(autocommit=False)
        kafka.local.up()
        _produce_after(kafka_settings)
        _until(lambda: handled == ["after"], "the record produced after the outage")
    finally:
        kafka.local.up()  # a no-op when it runs already: later tests need the broker
        stop.set()
        thread.join(timeout=30)
        worker.close()


def test_a_worker_that_meets_the_outage_before_joining_consumes_once_the_broker_is_back(
        kafka: KafkaHandle, kafka_settings: Settings):
    if kafka.local is None:
        pytest.skip(f"cannot stop a {kafka.kind} broker from the tests")
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    handled: list[str] = []
    worker = build_worker(kafka_settings, f"g-{uuid.uuid4().hex[:8]}", [SYNC_COMMANDS],
                          lambda records: handled.extend(_reasons(records)),
                          group_instance_id="outage")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    kafka.local.down()
    try:
        with capture_logs() as logs:
            thread.start()  # its first poll looks for the group's coordinator: nobody answers
            _until(lambda: not thread.is_alive()
                   or any("could not poll" in e["event"] for e in logs), "the outage met")
        kafka.local.up()
        _produce_after(kafka_settings)
        _until(lambda: handled == ["after"], "the record produced after the outage")
        assert thread.is_alive()
    finally:
        kafka.local.up()  # a no-op when it runs already: later tests need the broker
        stop.set()
        thread.join(timeout=30)
        worker.close()
