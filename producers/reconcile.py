"""producers/reconcile: the full-reconcile job's commands (docs/architecture.md "Flow"; issue 6).

    schedule (nightly, every N, cron)  --+
    `contactsync reconcile` (on demand) -+--> sync.commands (key user id): full_sync, run_id

A reconcile is a `full_sync` command per user, keyed by the user id exactly as the router keys
its commands: the same key lands on the same partition, so the applier runs a user's reconcile
in that user's order and it never races the near-real-time work of that user.

The scheduler fires at each slot of `reconcile_schedule` (UTC) and spreads the enabled users
over `reconcile_jitter` seconds (one random order, one random point in each user's share of
the window), so the users do not all hit Graph and BC at once. Each slot's run id is derived
from the slot, and each command's event id from the run id and the user: a run published
twice (a restarted scheduler) is recognisable. Run ONE scheduler (like bc-changes and
subscriptions); a scheduler stopped inside a window leaves the rest of that run unpublished,
and the next slot covers those users.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError, KafkaError

from contactsync.errors import KafkaUnavailable
from contactsync.kafka.io import make_consumer, make_producer
from contactsync.kafka.topics import SYNC_COMMANDS, SYNC_RESULTS, topic_name
from contactsync.logs import get_logger
from contactsync.schemas.envelope import MessageError, decode, encode, wrap
from contactsync.schemas.messages import CommandKind, SyncCommand, SyncResult
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.sync.run_ids import new_run_id as new_run_id  # where callers found it
from contactsync.sync.services import ConfigError

NIGHTLY = "0 2 * * *"  # 02:00 UTC
SEND_TIMEOUT_S = 30.0
QUIET_NOTE_S = 10.0  # `reconcile --wait` says it is still waiting at least this often
COMMAND_TTL_S = 3600.0  # a reconcile command not taken within this is dropped as `expired`
_COMMAND_IDS = uuid.UUID("0e7d9a3c-6b1f-4f2e-8a55-3c9d1e7b2f60")  # namespace of command ids
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _log() -> Any:
    return get_logger("contactsync.reconcile")


class ScheduleError(ConfigError):
    """A `reconcile_schedule` that cannot be read; the message says what is expected."""


# --- schedules ---

@dataclass(frozen=True)
class _Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday, as cron
    any_day: bool  # day-of-month field was "*"
    any_weekday: bool

    def day_matches(self, d: datetime) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # cron: restricted fields combine with AND...
            return dom and dow
        return dom or dow  # ...but two restricted day fields with OR


def _cron_field(text: str, low: int, high: int, what: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", part)
        if not match:
            raise ScheduleError(f"cron {what} field {text!r}: expected *, N, N-M, */S or lists")
        span, step = match.group(1), int(match.group(2) or 1)
        if span == "*":
            start, end = low, high
        elif "-" in span:
            start, end = (int(x) for x in span.split("-"))
        else:
            start = end = int(span)
            if match.group(2):
                end = high
        if not (low <= start <= end <= high) or step < 1:
            raise ScheduleError(f"cron {what} field {text!r}: out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    if what == "weekday" and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return frozenset(values)


def _parse_cron(text: str) -> _Cron:
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron {text!r}: expected 5 fields (minute hour day month weekday)")
    minute, hour, day, month, weekday = fields
    return _Cron(
        _cron_field(minute, 0, 59, "minute"), _cron_field(hour, 0, 23, "hour"),
        _cron_field(day, 1, 31, "day"), _cron_field(month, 1, 12, "month"),
        _cron_field(weekday, 0, 7, "weekday"), day == "*", weekday == "*",
    )


@dataclass(frozen=True)
class Schedule:
    """When reconcile runs: every `interval` seconds (aligned to the epoch, so restarts keep the
    same slots), at the slots of a cron spec, or never (`off`). Times are UTC."""

    text: str
    interval: float | None = None
    cron: _Cron | None = None

    def next_after(self, now: datetime) -> datetime | None:
        """The first slot strictly after `now`; None when the schedule is off."""
        now = now.astimezone(UTC)
        if self.interval is not None:
            slots = int(now.timestamp() // self.interval) + 1
            return datetime.fromtimestamp(slots * self.interval, UTC)
        if self.cron is None:
            return None
        cron = self.cron
        t = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=366 * 5)  # e.g. "0 0 29 2 *" fires once in four years
        while t < limit:
            if not cron.day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
            elif t.hour not in cron.hours:
                t = (t + timedelta(hours=1)).replace(minute=0)
            elif t.minute not in cron.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None


def parse_schedule(text: str) -> Schedule:
    """`nightly` (02:00 UTC), `off`, `every N[s|m|h|d]` or a 5-field cron spec (UTC)."""
    spec = text.strip().lower()
    if spec in ("off", "never", "none", ""):
        return Schedule(text)
    if spec in ("nightly", "daily", "@daily", "@nightly"):
        return Schedule(text, cron=_parse_cron(NIGHTLY))
    if spec == "hourly" or spec == "@hourly":
        return Schedule(text, interval=3600.0)
    every = re.fullmatch(r"every\s+(\d+(?:\.\d+)?)\s*([smhd]?)", spec)
    if every:
        seconds = float(every.group(1)) * _UNITS[every.group(2) or "s"]
        if seconds <= 0:
            raise ScheduleError(f"schedule {text!r}: the interval must be positive")
        return Schedule(text, interval=seconds)
    if spec.startswith("every"):
        raise ScheduleError(f"schedule {text!r}: expected `every N` with s, m, h or d")
    return Schedule(text, cron=_parse_cron(spec))


# --- spreading and commands ---

def spread(user_ids: Iterable[str], window: float,
           rng: random.Random | None = None) -> list[tuple[float, str]]:
    """(offset in seconds, user) for each user, by offset: a random order, and a random point in
    each user's equal share of the window, so no two users start together by construction."""
    rng = rng or random.Random()
    users = list(dict.fromkeys(user_ids))
    rng.shuffle(users)
    share = window / len(users) if users else 0.0
    return [((i + rng.random()) * share, user) for i, user in enumerate(users)]


def reconcile_command(user_id: str, run_id: str, *, dry_run: bool = False,
                      force: bool = False, reason: str = "reconcile",
                      expires_in: float = COMMAND_TTL_S) -> SyncCommand:
    """A full_sync command that an applier drops (result `expired`) after `expires_in`
    seconds: a reconcile asked for now is not run hours later, behind everyone's back."""
    return SyncCommand(user_id=user_id, kind=CommandKind.FULL_SYNC, reason=reason,
                       run_id=run_id, dry_run=dry_run, force=force,
                       expires_at=datetime.now(UTC) + timedelta(seconds=expires_in))


def command_event_id(run_id: str, user_id: str) -> str:
    return uuid.uuid5(_COMMAND_IDS, f"{run_id}\x1f{user_id}").hex


class CommandPublisher:
    """Publishes reconcile commands keyed by user id (as the router does) and waits for the
    broker's acks: a publish that returned is on the broker."""

    def __init__(self, settings: Settings, producer: KafkaProducer | None = None) -> None:
        self.settings = settings
        self._producer = producer
        self._owns_producer = producer is None
        self.topic = topic_name(settings, SYNC_COMMANDS)

    def publish(self, commands: Sequence[SyncCommand]) -> list[int]:
        """The partition each command landed on, in order."""
        if not commands:
            return []
        if self._producer is None:
            self._producer = make_producer(self.settings,
                                           client_id="contactsync-reconcile")
        try:
            futures = [
                self._producer.send(
                    self.topic, key=c.user_id.encode(),
                    value=encode(wrap(c, trace_id=c.run_id,
                                      event_id=command_event_id(c.run_id, c.user_id))))
                for c in commands
            ]
            self._producer.flush(timeout=SEND_TIMEOUT_S)
            return [int(f.get(timeout=SEND_TIMEOUT_S).partition) for f in futures]
        except KafkaError as exc:
            raise KafkaUnavailable(f"could not publish reconcile commands: {exc}") from exc

    def close(self) -> None:
        if self._producer is not None and self._owns_producer:
            self._producer.close(timeout=10)
            self._producer = None


# --- the scheduler role ---

class Scheduler:
    """The reconcile role: at each slot, one full_sync command per enabled user, spread."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        schedule: Schedule | None = None,
        jitter: float | None = None,
        publisher: CommandPublisher | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.schedule = schedule or parse_schedule(settings.reconcile_schedule)
        self.jitter = settings.reconcile_jitter if jitter is None else jitter
        self.publisher = publisher or CommandPublisher(settings)
        self.rng = rng or random.Random()
        self.clock = clock
        self.published = 0  # commands published, for logs and tests

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                slot = self.schedule.next_after(datetime.fromtimestamp(self.clock(), UTC))
                if slot is None:
                    _log().info("reconcile schedule is off", schedule=self.schedule.text)
                    stop.wait()
                    return
                _log().info("next reconcile", at=slot.isoformat())
                if self._wait_until(slot.timestamp(), stop):
                    self.run_slot(slot, stop)
        finally:
            self.publisher.close()

    def run_slot(self, slot: datetime, stop: threading.Event) -> str:
        """Publish the slot's run: each enabled user at its point of the window. Returns the
        run id. A user disabled before its turn is left out."""
        run_id = new_run_id("scheduled", slot, unique=False)
        users = [s.user_id for s in self.store.setups.list_all() if s.syncs]
        plan = spread(users, self.jitter, self.rng)
        _log().info("reconcile run", run_id=run_id, users=len(plan), window_s=self.jitter)
        for offset, user_id in plan:
            if not self._wait_until(slot.timestamp() + offset, stop):
                _log().warning("reconcile run stopped before every user was published",
                               run_id=run_id, published=self.published)
                break
            setup = self.store.setups.get(user_id)
            if setup is None or not setup.syncs:
                continue
            self.publisher.publish([reconcile_command(user_id, run_id, reason="schedule")])
            self.published += 1
        return run_id

    def _wait_until(self, when: float, stop: threading.Event) -> bool:
        """Sleep until `when` (epoch seconds); False if stopped first."""
        while not stop.is_set():
            remaining = when - self.clock()
            if remaining <= 0:
                return True
            stop.wait(min(remaining, 30.0))  # re-read the clock: sleeps drift
        return False


def run_scheduler(settings: Settings, store: Store, stop: threading.Event) -> None:
    Scheduler(settings, store).run(stop)


# --- following a run's results (`reconcile --wait`) ---

def consumers_of(settings: Settings, group_id: str, topic: str, wait: float = 0.0) -> int:
    """How many members of the role group `group_id` (carrying the topic prefix) subscribe to
    `topic` (0: nobody would take a command published there), looking again for up to `wait`
    seconds while there are none (a member that is starting joins within seconds)."""
    from contactsync.kafka.topics import group_name, make_admin

    group_id = group_name(settings, group_id)
    admin = make_admin(settings, client_id="contactsync-reconcile-check",
                       request_timeout_ms=10_000)
    deadline = time.monotonic() + wait
    try:
        while True:
            count = _subscribed(admin, group_id, topic)
            if count or time.monotonic() >= deadline:
                return count
            time.sleep(0.5)
    finally:
        admin.close()


def _subscribed(admin: KafkaAdminClient, group_id: str, topic: str) -> int:
    try:
        group = admin.describe_groups([group_id]).get(group_id) or {}
    except CoordinatorNotAvailableError:
        return 0  # no group has ever committed on this broker: nobody consumes
    except KafkaError as exc:
        raise KafkaUnavailable(f"could not describe the consumer group {group_id}: {exc}") from exc
    count = 0
    for member in group.get("members") or []:
        metadata = member.get("member_metadata")
        topics = metadata.get("topics") if isinstance(metadata, dict) else None
        count += topics is None or topic in topics  # undecodable: assume it is one of ours
    return count


class ResultWaiter:
    """Reads `sync.results` from its current end, so it must be made BEFORE the commands are
    published; `follow` then collects the run's result of each user (the first one, as a
    retried command may publish its result twice)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = topic_name(settings, SYNC_RESULTS)
        self.consumer = make_consumer(settings, None, client_id="contactsync-reconcile-wait")
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            self.consumer.close()
            raise KafkaUnavailable(f"no topic {self.topic}: run `contactsync topics ensure`")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        for tp, end in self.consumer.end_offsets(tps).items():
            self.consumer.seek(tp, end)

    def follow(self, run_id: str, user_ids: Iterable[str], timeout: float,
               on_result: Callable[[SyncResult], None] | None = None,
               on_quiet: Callable[[int, float], None] | None = None) -> dict[str, SyncResult]:
        """The run's results by user; `on_quiet(pending, waited_s)` is called whenever no
        result came for QUIET_NOTE_S, so a long wait is never silent."""
        pending = set(user_ids)
        found: dict[str, SyncResult] = {}
        started = time.monotonic()
        deadline, note_at = started + timeout, started + QUIET_NOTE_S
        while pending and time.monotonic() < deadline:
            if on_quiet is not None and time.monotonic() >= note_at:
                on_quiet(len(pending), time.monotonic() - started)
                note_at = time.monotonic() + QUIET_NOTE_S
            for records in self.consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        result = decode(record.value).payload
                    except MessageError:
                        continue  # not ours to judge; the topic's consumers dead-letter it
                    if (isinstance(result, SyncResult) and result.run_id == run_id
                            and result.user_id in pending):
                        pending.discard(result.user_id)
                        found[result.user_id] = result
                        note_at = time.monotonic() + QUIET_NOTE_S
                        if on_result is not None:
                            on_result(result)
        return found

    def close(self) -> None:
        self.consumer.close(autocommit=False)
