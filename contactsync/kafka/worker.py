"""The at-least-once consumer loop the router and the applier share (docs/architecture.md 9).

    poll a batch -> decode envelopes -> group (by record, by key, ...) -> handler(group)
      -> send what the handlers returned -> await the acks once -> commit, per partition, up
         to the first record not finished

- Handlers do not publish: they return a `Publish` (`kafka.publish`); a group's records are
  finished once every message it returned is acked. Messages the broker does not take hold
  the worker back (backoff, then the unfinished records are fetched again), never dead-letter.

- A record that does not decode (`MessageError`) goes straight to the dead-letter topic: the
  error is deterministic, retrying cannot help.
- A group whose handler raises a retryable error (`contactsync.errors`: the root says whether)
  is retried with jittered exponential backoff (honouring a 429's or a 503's Retry-After) for at
  most `RetryPolicy.timeout` seconds, then every record of the group is dead-lettered: the
  service is down for all of them alike.
- A failing Azure credential is nobody's record's fault: an error whose `credential` is set
  (Entra refused it, or Graph or BC answered 401 to our token; or no token past the retry
  budget) pauses the worker instead. The batch's records are
  left unfinished (the consumer seeks back to them) and polling resumes after
  `credential_pause` seconds, so the backlog waits on the topic, neither consumed nor
  dead-lettered, until the credential works again (`contactsync.credential_health` logs it
  and fails readiness meanwhile).
- Any other exception is deterministic: a group of one record is dead-lettered at once; a larger
  group is split and each record runs alone, so one bad record does not fail its neighbours.
- A dead letter counts as finished only once the broker acked it (acks=all, idempotent).
- Offsets are committed after each batch and in `on_partitions_revoked`, only past finished
  records (contiguous per partition). Stopping (the `threading.Event`) mid-batch leaves the rest
  uncommitted: it is delivered again, which the handlers must tolerate (idempotent effects).
  kafka-python 3 runs rebalance listeners on its IO thread, where the blocking `commit()`
  raises; the revoke-time commit is `commit_async`'s future, awaited by an async listener.
- A consumer whose group membership does not complete (not STABLE: mid-join, or commits
  refused with RebalanceInProgress) for longer than `stuck_after` (max(30 s, 2 x the session
  timeout)) is closed and built again with the same settings, with a warning: after a broker
  outage kafka-python can stay mid-join for good, holding no partition while the role's timed
  work goes on. Its unfinished records are delivered again (at-least-once). An empty poll that
  returned at once or spun on the CPU backs off instead of polling again in a busy loop; a
  consumer that keeps spinning counts as stuck too. A retriable Kafka error out of `poll()`
  (kafka-python lets a refused connection out while it looks for the group's coordinator) is
  a warning and a backoff, never the end of the loop.

Keep `max_poll_records` x (handler time + retry budget) under the consumer's
max_poll_interval_ms (300 s by default), or the group evicts the worker mid-batch.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import RetriableError
from kafka.structs import MemberState, OffsetAndMetadata

from contactsync import metrics
from contactsync.credential_health import CREDENTIAL_PAUSE_S, HEALTH
from contactsync.errors import ServiceError, is_credential_failure, is_retryable
from contactsync.kafka.deadletter import DeadLetterSink
from contactsync.kafka.io import make_producer, role_consumer
from contactsync.kafka.publish import SEND_TIMEOUT_S, Publish, Publisher, carried
from contactsync.kafka.topics import DEADLETTER, await_topics, topic_name
from contactsync.logs import get_logger
from contactsync.retry import WORKER_RETRY, backoff_delay, retry_delay
from contactsync.retry import RetryPolicy as RetryPolicy  # the one policy (tests, roles)
from contactsync.schemas.envelope import Envelope, MessageError, decode
from contactsync.settings import Settings

LAG_EVERY_SECONDS = 5.0  # how often a worker measures its lag (one ListOffsets request)
STUCK_FLOOR_S = 30.0  # a membership unsettled this long (at least) gets a fresh consumer
SPIN_BACKOFF_MAX_S = 5.0  # the longest wait after polls that spun
CLOSE_TIMEOUT_MS = 5000  # closing a stuck consumer: never wait on it for long


def _log() -> Any:
    # Resolved per call: a logger bound at import would miss configure_logging (and redaction).
    return get_logger("contactsync.worker")


@dataclass(frozen=True, slots=True)
class WorkRecord:
    """One decoded record, with where it came from."""

    topic: str
    partition: int
    offset: int
    key: str | None
    envelope: Envelope[Any]
    record: Any = field(repr=False, compare=False)  # the ConsumerRecord, for dead-lettering

    @property
    def payload(self) -> Any:
        return self.envelope.payload

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """The record's Kafka headers (the trace context travels there)."""
        return list(getattr(self.record, "headers", None) or [])


# A handler returns what it wants published (or None); the worker publishes it.
Handler = Callable[[Sequence[WorkRecord]], Publish | None]
GroupBy = Callable[[WorkRecord], Hashable]


def by_record(record: WorkRecord) -> Hashable:
    return (record.topic, record.partition, record.offset)


def by_key(record: WorkRecord) -> Hashable:
    """Records of one key together, in offset order (a keyless record stands alone)."""
    if record.key is None:
        return by_record(record)
    return (record.topic, record.partition, "key", record.key)


class OffsetTracker:
    """Per partition: which polled offsets are not finished yet, and what may be committed."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._first: dict[TopicPartition, int] = {}  # where polling started: nothing to commit

    def track(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._first.setdefault(tp, offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        self._pending.get(tp, set()).discard(offset)

    def first_pending(self, tp: TopicPartition) -> int | None:
        pending = self._pending.get(tp)
        return min(pending) if pending else None

    def committable(self, only: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        out = {}
        for tp, next_offset in self._next.items():
            if only is not None and tp not in only:
                continue
            pending = self._pending.get(tp)
            position = min(pending) if pending else next_offset
            if position > self._committed.get(tp, self._first.get(tp, -1)):
                out[tp] = position
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
            self._first.pop(tp, None)


@dataclass
class _Outcome:
    error: Exception | None
    attempts: int
    retryable: bool = False
    stopped: bool = False
    credential: bool = False  # the credential failed: pause, leave the records on the topic
    publish: Publish | None = None  # what the handler returned (or its error carried)
    first_failed_at: datetime | None = None  # when the first attempt failed


class _CommitOnRevoke(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Async: kafka-python 3 calls listeners on its IO thread, where a blocking call into the
    consumer (`commit()`) raises RuntimeError; awaiting is what it allows there."""

    def __init__(self, worker: Worker, consumer: KafkaConsumer) -> None:
        self._worker = worker
        self._consumer = consumer  # the one it listens to (the worker may have a fresh one)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.commit_revoked(self._consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._worker.tracker.forget(set(lost))  # evicted: a commit would fail anyway
        self._worker.forget_lag(set(lost))


def stuck_bound(consumer: KafkaConsumer) -> float:
    """How long a consumer's membership may stay unsettled before it is built again: twice
    the session timeout (the broker evicts a silent member within one), at least 30 s."""
    session_ms = consumer.config.get("session_timeout_ms") or 45_000
    return max(STUCK_FLOOR_S, 2 * session_ms / 1000)


class MembershipWatch:
    """Since when the consumer's group membership has been unsettled (a pure clock)."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self._since: float | None = None

    def stuck(self, settled: bool, now: float) -> bool:
        """Record what this cycle saw; True once unsettled for longer than the bound."""
        if settled:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        return now - self._since > self.bound

    def unsettled_for(self, now: float) -> float:
        return 0.0 if self._since is None else now - self._since

    def reset(self) -> None:
        self._since = None


def poll_spun(wall: float, cpu: float, timeout: float) -> bool:
    """Whether an empty poll of `timeout` seconds came back at once (under a tenth of it) or
    kept this thread on the CPU for more than half of the time it took."""
    return wall < timeout / 10 or cpu > wall / 2


def spin_backoff(timeout: float, spins: int) -> float:
    """The wait after `spins` such polls in a row: the poll timeout, doubling, at most 5 s."""
    return min(SPIN_BACKOFF_MAX_S, timeout * 2.0 ** min(spins - 1, 8))


def same_consumer(consumer: KafkaConsumer) -> Callable[[], KafkaConsumer]:
    """A builder of fresh consumers with `consumer`'s settings (group, instance id, ...)."""
    config = {k: v for k, v in consumer.config.items() if k in KafkaConsumer.DEFAULT_CONFIG}
    return lambda: KafkaConsumer(**config)


def _to_commit(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}


class Worker:
    def __init__(
        self,
        consumer: KafkaConsumer,
        topics: Sequence[str],
        handler: Handler,
        dead_letters: DeadLetterSink,
        *,
        group_by: GroupBy = by_record,
        retry: RetryPolicy | None = None,
        poll_timeout_ms: int = 500,
        owned_producer: KafkaProducer | None = None,
        publisher: Publisher | None = None,
        rng: random.Random | None = None,
        credential_pause: float = CREDENTIAL_PAUSE_S,
        gather: Callable[[], float] | None = None,
        remake: Callable[[], KafkaConsumer] | None = None,
        stuck_after: float | None = None,
    ) -> None:
        self.consumer = consumer
        # A consumer stuck outside its group is replaced by `remake()` (same settings).
        self._remake = remake or same_consumer(consumer)
        self.membership = MembershipWatch(stuck_after or stuck_bound(consumer))
        self._spins = 0  # empty polls in a row that returned at once or spun on the CPU
        # Once a poll returned records: seconds to keep polling for more, so that they are
        # handled together (the BC feed answers every hint gathered with one query).
        self.gather = gather
        self.topics = list(topics)
        self.handler = handler
        self.dead_letters = dead_letters
        self.group_by = group_by
        self.retry = retry or WORKER_RETRY
        self.poll_timeout_ms = poll_timeout_ms
        self.tracker = OffsetTracker()
        self._owned_producer = owned_producer
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._subscribed = False
        self.group = str(consumer.config.get("group_id") or "")
        self._lag_due = 0.0
        self.credential_pause = credential_pause
        self._paused_until: float | None = None
        self._refused_by: set[str] = set()  # services that answered 401 to our token
        self.publisher = publisher
        # Sent this poll, not yet acked: (records finished by the acks, futures, then).
        self._inflight: list[tuple[list[Any], list[Any], Any]] = []
        self._publish_failures = 0  # in a row: the backoff before polling again

    # --- the loop ---

    def run(self, stop: threading.Event, *,
            between: Callable[[], None] | None = None) -> None:
        """Poll and process until `stop` is set; commits finished work on the way out.
        `between` (a role's timed work: a pass, a timer round) runs before each poll, in this
        thread; it publishes with the worker's producer (`publisher.publish`, acks awaited) and
        handles its own failures."""
        self._stop = stop
        try:
            while not stop.is_set():
                if between is not None:
                    between()
                    if stop.is_set():
                        break
                self.run_once()
        finally:
            self.commit()

    def run_once(self) -> int:
        """One poll, process, commit cycle; returns how many records were polled."""
        if self._paused_until is not None:  # the credential failed: wait, then try again
            if self._stop.wait(max(0.0, self._paused_until - time.monotonic())):
                return 0
            self._paused_until = None
        polled, spun = self._poll()
        if polled and self.gather is not None:
            deadline = time.monotonic() + self.gather()
            while (left := deadline - time.monotonic()) > 0:
                try:
                    more = self.consumer.poll(timeout_ms=max(1, int(left * 1000)))
                except RetriableError:  # handle what came; the next poll says what is wrong
                    break
                if not more:
                    break
                for tp, batch in more.items():
                    polled.setdefault(tp, []).extend(batch)
        records = [r for tp in sorted(polled) for r in polled[tp]]
        if records:  # Kafka timestamps are the produce times, in ms
            oldest = min(r.timestamp for r in records) / 1000
            metrics.OLDEST_UNAPPLIED.set_oldest(self.group, oldest)
        for r in records:
            self.tracker.track(TopicPartition(r.topic, r.partition), r.offset)
        groups: dict[Hashable, list[WorkRecord]] = {}
        for r in records:
            try:
                envelope = decode(r.value)
            except MessageError as exc:
                self._dead_letter([r], str(exc), type(exc).__name__, attempts=1)
                continue
            key = r.key.decode("utf-8", "replace") if r.key is not None else None
            work = WorkRecord(r.topic, r.partition, r.offset, key, envelope, r)
            groups.setdefault(self.group_by(work), []).append(work)
        for group in groups.values():
            if self._stop.is_set() or self._paused_until is not None:
                break  # the rest stays uncommitted and is delivered again
            self._run_group(group)
        self._settle()
        if self._paused_until is not None:
            self._rewind({TopicPartition(r.topic, r.partition) for r in records})
        self.commit()
        self._export_lag()
        self._watch_membership(spun)
        return len(records)

    def _poll(self) -> tuple[dict[TopicPartition, list[Any]], bool]:
        """Subscribe (once), then poll: (the records by partition, whether the poll spun or
        failed and was backed off)."""
        started, cpu = time.monotonic(), time.thread_time()
        try:
            if not self._subscribed:
                for topic in self.topics:  # known before the first join: the group leader's
                    self.consumer.partitions_for_topic(topic)  # assignor sees every partition
                self.consumer.subscribe(self.topics, listener=_CommitOnRevoke(self, self.consumer))
                self._subscribed = True
            polled: dict[TopicPartition, list[Any]] = self.consumer.poll(
                timeout_ms=self.poll_timeout_ms)
        except RetriableError as exc:  # kafka-python lets some broker outages out of poll()
            _log().warning("could not poll the broker; polling again", group=self.group,
                           error=str(exc))
            return {}, self._spun(0.0, 0.0)
        spun = not polled and self._spun(time.monotonic() - started, time.thread_time() - cpu)
        return polled, spun

    # --- a consumer that never settles in its group ---

    def _spun(self, wall: float, cpu: float) -> bool:
        """An empty poll that came back at once, or burnt the CPU the whole time (kafka-python
        polls again without sleeping while its heartbeat is overdue): wait before the next
        one, longer each time in a row."""
        timeout = self.poll_timeout_ms / 1000
        if not poll_spun(wall, cpu, timeout):
            self._spins = 0
            return False
        self._spins += 1
        delay = spin_backoff(timeout, self._spins)
        _log().debug("empty poll returned at once or spun; backing off", wait_s=delay,
                     cpu_s=round(cpu, 3), wall_s=round(wall, 3))
        self._stop.wait(delay)
        return True

    def _settled(self) -> bool:
        """Whether the consumer is a full member of its group (joined and synced)."""
        return bool(self.consumer.group_metadata().state is MemberState.STABLE)

    def _watch_membership(self, spun: bool) -> None:
        now = time.monotonic()
        if self.membership.stuck(self._settled() and not spun, now):
            self.replace_consumer(self.membership.unsettled_for(now))

    def replace_consumer(self, unsettled_for: float) -> None:
        """Close the consumer and go on with a fresh one built with the same settings; the
        records not committed yet are delivered again (the group starts from the commits)."""
        try:
            fresh = self._remake()
        except Exception as exc:  # the broker is away: try again after another bound
            _log().warning("consumer not in its group and no fresh one could be built; "
                           "trying again later", group=self.group, error=str(exc),
                           unsettled_s=round(unsettled_for, 1))
            self.membership.reset()
            return
        _log().warning("consumer did not complete joining its group; replacing it with a "
                       "fresh one (uncommitted records are delivered again)", group=self.group,
                       unsettled_s=round(unsettled_for, 1), bound_s=self.membership.bound)
        old, self.consumer = self.consumer, fresh
        self.forget_lag(set(old.assignment()))
        try:
            old.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)
        except Exception as exc:  # it is being dropped: nothing more to do with it
            _log().debug("closing the stuck consumer failed", error=str(exc))
        self.tracker = OffsetTracker()
        self._subscribed = False
        self.membership.reset()

    def _export_lag(self, every: float = LAG_EVERY_SECONDS) -> None:
        """Per assigned partition, end offset minus position; at most every `every` seconds
        (it asks the broker). Caught up everywhere: no change is waiting, the age is 0."""
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + every
        assigned = self.consumer.assignment()
        try:
            ends = self.consumer.end_offsets(list(assigned)) if assigned else {}
            lags = {tp: max(0, end - self.consumer.position(tp)) for tp, end in ends.items()}
        except Exception as exc:  # a broker hiccup costs one sample, never the worker
            _log().debug("consumer lag not measured", error=str(exc))
            return
        for tp, lag in lags.items():
            metrics.CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(lag)
        if not any(lags.values()):
            metrics.OLDEST_UNAPPLIED.set_oldest(self.group, None)

    def forget_lag(self, tps: set[TopicPartition]) -> None:
        """Partitions now another worker's: their lag is reported there."""
        for tp in tps:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self.group, tp.topic, str(tp.partition))

    def _rewind(self, tps: set[TopicPartition]) -> None:
        """Fetch again from each partition's first unfinished record."""
        for tp in tps:
            first = self.tracker.first_pending(tp)
            if first is None:
                continue
            try:
                self.consumer.seek(tp, first)
            except Exception as exc:  # revoked meanwhile: its next owner starts from the commit
                _log().debug("could not seek back", error=str(exc), topic=tp.topic,
                             partition=tp.partition)

    # --- publishing what the handlers returned ---

    def _hand_over(self, records: list[Any], publish: Publish | None) -> None:
        """Send `publish`'s messages; `records` finish once every one is acked (`_settle`)."""
        if publish is None or not publish.messages:
            if publish is not None and publish.then is not None:
                publish.then()
            for record in records:
                self._finished(record)
            return
        if self.publisher is None:
            raise RuntimeError("this worker has no producer for its handler's messages")
        try:
            futures = [self.publisher.send(m) for m in publish.messages]
        except Exception as exc:
            self._publish_failed(exc)
            return
        self._inflight.append((records, futures, publish.then))

    def _settle(self) -> None:
        """Wait for the poll's acks (one flush); finish the records whose messages all landed."""
        inflight, self._inflight = self._inflight, []
        if not inflight:
            return
        assert self.publisher is not None
        with contextlib.suppress(Exception):  # each future tells its own outcome below
            self.publisher.producer.flush(timeout=SEND_TIMEOUT_S)
        failure: Exception | None = None
        for records, futures, then in inflight:
            try:
                for future in futures:
                    future.get(timeout=SEND_TIMEOUT_S)
            except Exception as exc:
                failure = failure or exc
                continue
            if then is not None:
                then()
            for record in records:
                self._finished(record)
        if failure is not None:
            self._publish_failed(failure)
        else:
            self._publish_failures = 0

    def _publish_failed(self, error: Exception) -> None:
        """The broker did not take a handler's messages: nothing is finished past them. Back
        off, then fetch from the first unfinished record again (handlers are idempotent);
        never dead-lettered: the dead-letter topic is on the same broker."""
        self._publish_failures += 1
        delay = backoff_delay(self.retry, self._publish_failures - 1, self._rng.random())
        _log().warning("could not publish; backing off", error=str(error),
                       retry_in_s=round(delay, 3))
        self._paused_until = time.monotonic() + delay

    def _run_group(self, group: list[WorkRecord]) -> None:
        outcome = self._attempt(group)
        if outcome.stopped:
            return
        if outcome.credential:
            # Logged (once a minute) and counted by the credential's health; nothing is lost.
            self._paused_until = time.monotonic() + self.credential_pause
            error = outcome.error
            if isinstance(error, ServiceError) and error.status == 401:  # the API refused it
                HEALTH.failed(error.service, error)
                self._refused_by.add(error.service)
            return
        if outcome.error is None:
            while self._refused_by:  # the API takes our token again
                HEALTH.succeeded(self._refused_by.pop())
        if outcome.error is None:
            self._hand_over([w.record for w in group], outcome.publish)
            return
        if not outcome.retryable and len(group) > 1:
            for work in group:  # isolate the bad record(s)
                if self._stop.is_set():
                    return
                self._run_group([work])
            return
        reason = str(outcome.error) or type(outcome.error).__name__
        if outcome.retryable:
            reason = f"gave up after {outcome.attempts} attempts: {reason}"
        self._dead_letter([w.record for w in group], reason, type(outcome.error).__name__,
                          outcome.attempts, outcome.first_failed_at)

    def _attempt(self, group: list[WorkRecord]) -> _Outcome:
        """Run the handler, retrying what the error root calls retryable within the policy."""
        budget = self.retry.timeout
        deadline = time.monotonic() + budget if budget is not None else float("inf")
        attempt = 0
        first_failed: datetime | None = None
        while True:
            attempt += 1
            try:
                return _Outcome(None, attempt, publish=self.handler(group))
            except Exception as exc:
                first_failed = first_failed or datetime.now(UTC)
                credential = is_credential_failure(exc)
                done = carried(exc)
                if done is not None:  # acked now, so that a retry skips that work
                    self._hand_over([], done)
                    self._settle()
                if not is_retryable(exc):
                    return _Outcome(exc, attempt, credential=credential,
                                    first_failed_at=first_failed)
                delay = retry_delay(self.retry, attempt - 1, exc, self._rng.random())
                if delay is None or time.monotonic() + delay > deadline:
                    return _Outcome(exc, attempt, retryable=True, credential=credential,
                                    first_failed_at=first_failed)
                _log().info("retryable failure; backing off", attempt=attempt,
                            delay=round(delay, 3), error=str(exc), topic=group[0].topic,
                            partition=group[0].partition, offset=group[0].offset)
                if self._stop.wait(delay):
                    return _Outcome(exc, attempt, retryable=True, stopped=True)

    def _dead_letter(self, records: list[Any], reason: str, error_type: str,
                     attempts: int, first_failed_at: datetime | None = None) -> None:
        for record in records:
            delay = 0.5
            while True:
                try:
                    self.dead_letters.send(record, reason=reason, error_type=error_type,
                                           attempts=attempts, first_failed_at=first_failed_at)
                    break
                except Exception as exc:
                    # Never commit past a record whose dead letter is not on the broker.
                    _log().warning("could not write the dead letter; retrying", error=str(exc),
                                   topic=record.topic, partition=record.partition,
                                   offset=record.offset)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 10.0)
            _log().warning("dead-lettered", reason=reason, error_type=error_type,
                           attempts=attempts, topic=record.topic, partition=record.partition,
                           offset=record.offset)
            self._finished(record)

    def _finished(self, record: Any) -> None:
        self.tracker.done(TopicPartition(record.topic, record.partition), record.offset)

    # --- commits ---

    def commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = self.tracker.committable(only)
        if not offsets:
            return
        try:
            self.consumer.commit(_to_commit(offsets))
        except Exception as exc:  # rebalanced away: the records are delivered again elsewhere
            _log().warning("offset commit failed", error=str(exc))
            return
        self.tracker.committed(offsets)

    async def commit_revoked(self, consumer: KafkaConsumer,
                             revoked: set[TopicPartition]) -> None:
        """On the client's IO thread, before the partitions go: commit their finished work
        (`commit_async`'s future, awaited), then forget them."""
        offsets = self.tracker.committable(revoked)
        if offsets:
            try:
                await consumer.commit_async(_to_commit(offsets))
            except Exception as exc:  # the next owner redelivers the rest: at-least-once
                _log().warning("offset commit on revoke failed", error=str(exc))
        self.tracker.forget(revoked)
        self.forget_lag(revoked)

    def close(self) -> None:
        """Close the consumer (and our own producer); the revoke listener commits finished
        work only, so unfinished records are delivered again."""
        self.consumer.close(autocommit=False)
        if self._owned_producer is not None:
            self._owned_producer.close(timeout=10)


def build_worker(
    settings: Settings,
    group_id: str,
    topic_bases: Sequence[str],
    handler: Handler,
    *,
    group_by: GroupBy = by_record,
    retry: RetryPolicy | None = None,
    credential_pause: float = CREDENTIAL_PAUSE_S,
    gather: Callable[[], float] | None = None,
    stuck_after: float | None = None,
    **consumer_overrides: Any,
) -> Worker:
    """A worker on the settings' broker: consumer in the role's group `group_id` (prefixed like
    the topics), one producer for the handler's messages and the dead letters. Returns once the
    topics have their leaders."""
    await_topics(settings, [*topic_bases, DEADLETTER])
    def consumer() -> KafkaConsumer:
        return role_consumer(settings, group_id, **consumer_overrides)

    producer = make_producer(settings, client_id=f"contactsync-{group_id}")
    sink = DeadLetterSink(producer, topic_name(settings, DEADLETTER))
    topics = [topic_name(settings, base) for base in topic_bases]
    return Worker(consumer(), topics, handler, sink, group_by=group_by, retry=retry,
                  owned_producer=producer, publisher=Publisher(producer),
                  credential_pause=credential_pause, gather=gather, remake=consumer,
                  stuck_after=stuck_after)
