"""A worker meets a broker outage (the session's local broker, stopped and started on the same
address): it keeps polling through it and consumes what is produced once the broker is back."""

from __future__ import annotations

import threading
import uuid

import pytest
from kafka.structs import MemberState
from structlog.testing import capture_logs

from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at
from contactsync.kafka.worker import build_worker
from contactsync.settings import Settings
from tests.kafka.helpers import other_member, produce, reasons, until
from tests.kafka_fixtures import KafkaHandle

pytestmark = pytest.mark.kafka


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
    other = other_member(kafka_settings, group, session_timeout_ms=6000,
                         heartbeat_interval_ms=1000)
    handled: list[str] = []
    worker = build_worker(kafka_settings, group, [SYNC_COMMANDS],
                          lambda records: handled.extend(reasons(records)),
                          group_instance_id="mid-join")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    try:
        thread.start()
        until(lambda: worker.consumer.group_metadata().state is MemberState.REBALANCING,
               "the worker's join pending")
        kafka.local.down()
        other.close(autocommit=False)
        kafka.local.up()
        produce(kafka_settings, ["after"], partition=None)
        until(lambda: handled == ["after"], "the record produced after the outage")
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
                          lambda records: handled.extend(reasons(records)),
                          group_instance_id="outage")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    kafka.local.down()
    try:
        with capture_logs() as logs:
            thread.start()  # its first poll looks for the group's coordinator: nobody answers
            until(lambda: not thread.is_alive()
                   or any("could not poll" in e["event"] for e in logs), "the outage met")
        kafka.local.up()
        produce(kafka_settings, ["after"], partition=None)
        until(lambda: handled == ["after"], "the record produced after the outage")
        assert thread.is_alive()
    finally:
        kafka.local.up()  # a no-op when it runs already: later tests need the broker
        stop.set()
        thread.join(timeout=30)
        worker.close()
