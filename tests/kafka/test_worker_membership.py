"""The worker's group membership against the real broker: the revoke-time commit lands (a
listener on kafka-python 3's IO thread), and a consumer that cannot complete joining its group
is replaced instead of idling silently for good."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import pytest
from kafka import KafkaConsumer, TopicPartition
from structlog.testing import capture_logs

from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at, group_name, topic_name
from contactsync.kafka.worker import (
    MembershipWatch,
    WorkRecord,
    build_worker,
    poll_spun,
    spin_backoff,
)
from contactsync.settings import Settings
from tests.kafka.helpers import other_member, produce, reasons, until

pytestmark = pytest.mark.kafka


class Interrupted(BaseException):
    """The process being interrupted mid-batch (not an Exception: the worker lets it out)."""


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    return kafka_settings


def _committed(settings: Settings, group: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                             group_id=group_name(settings, group), enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic_name(settings, SYNC_COMMANDS), 0))
    finally:
        consumer.close(autocommit=False)


def test_finished_records_are_committed_when_the_partitions_are_revoked(settings: Settings):
    """The batch's commit never ran (the process was interrupted after the first record was
    finished): closing revokes the partitions, and the listener commits that record, so the
    next owner starts after it instead of redelivering it."""
    produce(settings, ["done", "interrupted"])
    group = f"g-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []

    def interrupting(records: Sequence[WorkRecord]) -> None:
        if reasons(records) == ["interrupted"]:
            raise Interrupted
        handled.extend(reasons(records))

    first = build_worker(settings, group, [SYNC_COMMANDS], interrupting,
                         group_instance_id="first")
    try:
        with pytest.raises(Interrupted):
            until(lambda: False, "the interruption", first.run_once)
        assert _committed(settings, group) is None  # the batch's own commit never ran
    finally:
        first.close()
    assert _committed(settings, group) == 1  # the revoke-time commit landed

    second = build_worker(settings, group, [SYNC_COMMANDS],
                          lambda records: handled.extend(reasons(records)),
                          group_instance_id="second")
    try:
        until(lambda: "interrupted" in handled, "the next owner's delivery", second.run_once)
    finally:
        second.close()
    assert handled == ["done", "interrupted"]  # "done" was not delivered again


def test_a_consumer_that_cannot_complete_joining_is_replaced_and_consumes(settings: Settings):
    """Another member holds the group in its rebalance (it stopped polling without leaving):
    past the bound the worker says so and builds a fresh consumer, which joins once the other
    member is gone and consumes what is produced then."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    other = other_member(settings, group)
    handled: list[str] = []
    worker = build_worker(settings, group, [SYNC_COMMANDS],
                          lambda records: handled.extend(reasons(records)),
                          group_instance_id="worker", stuck_after=3.0)
    first_consumer = worker.consumer
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    try:
        with capture_logs() as logs:
            thread.start()
            until(lambda: worker.consumer is not first_consumer, "a fresh consumer")
        other.close(autocommit=False)  # leaves the group: the rebalance can complete
        produce(settings, ["after"])
        until(lambda: handled == ["after"], "the record produced afterwards")
    finally:
        stop.set()
        thread.join(timeout=30)
        worker.close()
    [warning] = [e for e in logs if "did not complete joining" in e["event"]]
    assert warning["log_level"] == "warning" and warning["group"] == worker.group


def test_membership_watch_counts_from_the_first_unsettled_cycle():
    watch = MembershipWatch(bound=30.0)
    assert not watch.stuck(False, now=100.0)
    assert not watch.stuck(False, now=130.0)  # exactly the bound: not yet
    assert watch.stuck(False, now=130.5)
    assert not watch.stuck(True, now=131.0)  # settled: the clock starts again
    assert not watch.stuck(False, now=140.0)
    assert watch.unsettled_for(now=150.0) == 10.0




def test_an_empty_poll_that_came_back_at_once_or_spun_is_backed_off():
    assert not poll_spun(wall=0.5, cpu=0.01, timeout=0.5)  # waited idle: poll again
    assert poll_spun(wall=0.001, cpu=0.0, timeout=0.5)  # came back at once
    assert poll_spun(wall=0.5, cpu=0.45, timeout=0.5)  # spun on the CPU the whole time
    assert [spin_backoff(0.5, n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
