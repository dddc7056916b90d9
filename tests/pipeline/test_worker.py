"""The at-least-once worker loop against the real broker: DLQ, retries, isolation, redelivery."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

import pytest
from kafka import KafkaConsumer, TopicPartition

from contactsync.clients.errors import ServiceUnavailable, Throttled
from contactsync.kafka.deadletter import read_dead_letters
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import (
    DEADLETTER,
    SYNC_COMMANDS,
    ensure_topics_at,
    group_name,
    topic_name,
)
from contactsync.kafka.worker import (
    OffsetTracker,
    RetryPolicy,
    Worker,
    WorkRecord,
    build_worker,
    by_key,
)
from contactsync.schemas.envelope import encode, wrap
from contactsync.schemas.messages import CommandKind, SyncCommand
from contactsync.settings import Settings

pytestmark = pytest.mark.kafka

FAST = RetryPolicy(max_attempts=1000, base_delay=0.01, max_delay=0.05, timeout=0.5)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the worker catches it."""


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    return kafka_settings


def _command(user: str, reason: str = "") -> bytes:
    return encode(wrap(SyncCommand(user_id=user, kind=CommandKind.SYNC, reason=reason)))


def _produce(settings: Settings, values: Sequence[bytes], key: bytes = b"user-1",
             partition: int = 0) -> None:
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        for value in values:
            producer.send(topic_name(settings, SYNC_COMMANDS), value=value, key=key,
                          partition=partition, headers=[("trace", b"t-1")])
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


def _run_until(worker: Worker, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the worker did not get there in time"
        worker.run_once()


def _committed(settings: Settings, group: str, partition: int = 0) -> int | None:
    # A role's group carries the deployment's topic prefix.
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                             group_id=group_name(settings, group), enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic_name(settings, SYNC_COMMANDS), partition))
    finally:
        consumer.close(autocommit=False)


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def _reasons(records: Sequence[WorkRecord]) -> list[str]:
    return [r.payload.reason for r in records]


def test_poison_message_is_dead_lettered_and_the_rest_go_on(settings: Settings):
    _produce(settings, [_command("u", "first"), b"{not json", _command("u", "third")])
    handled: list[str] = []
    group = _group()
    worker = build_worker(settings, group, [SYNC_COMMANDS],
                          lambda records: handled.extend(_reasons(records)), retry=FAST)
    try:
        _run_until(worker, lambda: len(handled) == 2)
        worker.run_once()
    finally:
        worker.close()
    assert handled == ["first", "third"]
    assert _committed(settings, group) == 3
    [entry] = read_dead_letters(settings.kafka_bootstrap_servers,
                                topic_name(settings, DEADLETTER))
    letter = entry.letter
    assert letter is not None
    assert (letter.source_topic, letter.partition, letter.offset) == (
        topic_name(settings, SYNC_COMMANDS), 0, 1)
    assert letter.error_type == "MalformedMessage" and "not valid JSON" in letter.reason
    assert letter.key == "user-1" and letter.value == "{not json"
    assert letter.headers == {"trace": "t-1"}
    assert entry.original_key == b"user-1" and entry.original_value == b"{not json"


def test_retryable_failures_are_retried_then_processed_once(settings: Settings):
    _produce(settings, [_command("u", "only")])
    calls: list[float] = []

    def flaky(records: Sequence[WorkRecord]) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Throttled("slow down", retry_after=0.3)
        if len(calls) == 2:
            raise ServiceUnavailable("503")

    group = _group()
    worker = build_worker(settings, group, [SYNC_COMMANDS], flaky,
                          retry=RetryPolicy(max_attempts=1000, base_delay=0.01, timeout=5))
    try:
        _run_until(worker, lambda: len(calls) == 3)
        worker.run_once()
    finally:
        worker.close()
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.3  # Retry-After honoured
    assert _committed(settings, group) == 1
    assert read_dead_letters(settings.kafka_bootstrap_servers,
                             topic_name(settings, DEADLETTER)) == []


def test_permanent_failures_are_dead_lettered_after_bounded_retries(settings: Settings):
    _produce(settings, [_command("u", "always-503"), _command("u", "bug"),
                        _command("u", "fine")])
    attempts: dict[str, int] = {}
    handled: list[str] = []

    def handler(records: Sequence[WorkRecord]) -> None:
        reason = records[0].payload.reason
        attempts[reason] = attempts.get(reason, 0) + 1
        if reason == "always-503":
            raise ServiceUnavailable("still down", service="graph", status=503)
        if reason == "bug":
            raise ValueError("deterministic")
        handled.append(reason)

    group = _group()
    worker = build_worker(settings, group, [SYNC_COMMANDS], handler, retry=FAST)
    started = time.monotonic()
    try:
        _run_until(worker, lambda: handled == ["fine"])
        worker.run_once()
    finally:
        worker.close()
    assert time.monotonic() - started < 10
    assert attempts["always-503"] > 2 and attempts["bug"] == 1
    assert _committed(settings, group) == 3
    letters = {e.letter.offset: e.letter for e in read_dead_letters(
        settings.kafka_bootstrap_servers, topic_name(settings, DEADLETTER)) if e.letter}
    assert set(letters) == {0, 1}
    assert letters[0].error_type == "ServiceUnavailable"
    assert letters[0].attempts == attempts["always-503"]
    assert "gave up after" in letters[0].reason
    # An admin sees how long it kept failing: the first failure precedes the last by the
    # retries in between; a record that failed once has one time for both.
    first, last = letters[0].first_failed_at, letters[0].failed_at
    assert first is not None and first < last
    assert (letters[1].error_type, letters[1].attempts) == ("ValueError", 1)
    assert letters[1].first_failed_at is not None
    assert (letters[1].failed_at - letters[1].first_failed_at).total_seconds() < 1


def test_one_bad_record_does_not_fail_its_group(settings: Settings):
    _produce(settings, [_command("u", "a"), _command("u", "bad"), _command("u", "c")])
    seen_groups: list[list[str]] = []
    handled: list[str] = []

    def handler(records: Sequence[WorkRecord]) -> None:
        seen_groups.append(_reasons(records))
        if "bad" in _reasons(records):
            raise ValueError("bad record")
        handled.extend(_reasons(records))

    group = _group()
    worker = build_worker(settings, group, [SYNC_COMMANDS], handler, group_by=by_key, retry=FAST)
    try:
        _run_until(worker, lambda: sorted(handled) == ["a", "c"])
    finally:
        worker.close()
    assert seen_groups[0] == ["a", "bad", "c"]  # grouped by key first, then split
    assert _committed(settings, group) == 3
    [entry] = read_dead_letters(settings.kafka_bootstrap_servers,
                                topic_name(settings, DEADLETTER))
    assert entry.letter is not None and entry.letter.offset == 1


def test_crash_before_commit_means_the_record_is_processed_again(settings: Settings):
    _produce(settings, [_command("u", "once-or-more")])
    group = _group()
    calls: list[str] = []

    def crashing(records: Sequence[WorkRecord]) -> None:
        calls.extend(_reasons(records))
        raise Crash

    first = build_worker(settings, group, [SYNC_COMMANDS], crashing)
    try:
        with pytest.raises(Crash):
            _run_until(first, lambda: False)
    finally:
        first.close()  # no commit
    assert _committed(settings, group) is None

    second = build_worker(settings, group, [SYNC_COMMANDS],
                          lambda records: calls.extend(_reasons(records)))
    try:
        _run_until(second, lambda: len(calls) == 2)
    finally:
        second.close()
    assert calls == ["once-or-more", "once-or-more"]
    assert _committed(settings, group) == 1


def test_run_stops_on_the_event_and_commits_finished_work(settings: Settings):
    _produce(settings, [_command("u", "x")])
    group = _group()
    stop = threading.Event()
    handled: list[str] = []

    def handler(records: Sequence[WorkRecord]) -> None:
        handled.extend(_reasons(records))
        stop.set()

    worker = build_worker(settings, group, [SYNC_COMMANDS], handler)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    thread.join(timeout=20)
    worker.close()
    assert not thread.is_alive() and handled == ["x"]
    assert _committed(settings, group) == 1


def test_offset_tracker_commits_only_contiguous_finished_work():
    tp = TopicPartition("t", 0)
    tracker = OffsetTracker()
    for offset in (5, 6, 7, 8):
        tracker.track(tp, offset)
    tracker.done(tp, 5)
    tracker.done(tp, 7)
    assert tracker.committable() == {tp: 6}
    tracker.committed({tp: 6})
    assert tracker.committable() == {}
    tracker.done(tp, 6)
    assert tracker.committable() == {tp: 8}
    tracker.done(tp, 8)
    assert tracker.committable() == {tp: 9}


def test_retry_policy_backs_off_and_stays_bounded():
    from contactsync.retry import WORKER_RETRY, backoff_delay

    ceilings = [backoff_delay(WORKER_RETRY, n, 0.999) for n in range(0, 12)]
    assert 0.29 <= ceilings[0] <= 0.3 and 0.59 <= ceilings[1] <= 0.6
    assert all(0 <= backoff_delay(WORKER_RETRY, n, r) <= 10.0 for n in range(12)
               for r in (0.0, 0.5, 0.999))

