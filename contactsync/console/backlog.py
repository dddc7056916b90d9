"""What the pipeline has not applied yet, read from Kafka itself: per role (consumer group),
committed offsets against the end offsets, and the record each group has not finished; per
user, the oldest command on `sync.commands` the applier has not finished (commands are keyed
by user). The console reads this wherever it runs, with or without the roles in its process.

Bounded: at most SCAN_LIMIT pending commands are read per look; a look is cached for
CACHE_S, as the pages poll every few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contactsync.settings import Settings

SCAN_LIMIT = 20_000  # pending commands read per look, at most
CACHE_S = 5.0
ROLE_GROUP_PREFIX = "contactsync-"  # role groups: contactsync-applier, contactsync-router...
NOT_ROLES = ("contactsync-dlq-replayer",)  # a one-shot command's group, not a role's


@dataclass(frozen=True)
class RoleLag:
    role: str  # "applier", "router", ...
    lag: int  # records not yet committed by the role's group
    oldest: datetime | None  # the Kafka timestamp of its oldest one; None: caught up


@dataclass(frozen=True)
class Backlog:
    roles: list[RoleLag]
    users: dict[str, datetime] = field(default_factory=dict)  # oldest unfinished command
    users_known: bool = False  # the applier's group was read: a user absent is caught up
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def user_age(self, user_id: str) -> float | None:
        """Seconds since the user's oldest change not yet applied; 0 caught up; None unknown."""
        if not self.users_known:
            return None
        oldest = self.users.get(user_id)
        return 0.0 if oldest is None else max(0.0, (self.at - oldest).total_seconds())


def _group_id(group: Any) -> str:
    return str(group.get("group_id", "")) if isinstance(group, dict) else str(group[0])


def _applier_group() -> str:
    from contactsync.consumers.applier import GROUP_ID

    return GROUP_ID


def read_backlog(settings: Settings) -> Backlog:
    """One look at the broker (blocking: call it through health.bounded)."""
    from contactsync.kafka.io import make_consumer
    from contactsync.kafka.topics import SYNC_COMMANDS, make_admin, topic_name

    prefix = settings.topic_prefix + ROLE_GROUP_PREFIX
    applier = settings.topic_prefix + _applier_group()
    commands = topic_name(settings, SYNC_COMMANDS)
    admin = make_admin(settings)
    consumer = make_consumer(settings, None, client_id="contactsync-console-backlog")
    try:
        groups = sorted(g for g in (_group_id(x) for x in admin.list_groups())
                        if g.startswith(prefix)
                        and g.removeprefix(settings.topic_prefix) not in NOT_ROLES)
        roles: list[RoleLag] = []
        users: dict[str, datetime] = {}
        for group in groups:
            committed = {tp: meta.offset for tp, meta in
                         admin.list_group_offsets({group: None}).get(group, {}).items()
                         if meta is not None and meta.offset >= 0}
            topics = {tp.topic for tp in committed} | ({commands} if group == applier else set())
            pending = _pending(consumer, topics, committed)
            limit = SCAN_LIMIT if group == applier else 1  # others: their oldest per partition
            records = _read(consumer, pending, limit)
            stamps = [at for _, at in records]
            roles.append(RoleLag(group.removeprefix(prefix),
                                 sum(end - start for start, end in pending.values()),
                                 min(stamps) if stamps else None))
            if group == applier:
                for key, at in records:
                    if key and (key not in users or at < users[key]):
                        users[key] = at
        return Backlog(roles, users, users_known=applier in groups)
    finally:
        consumer.close(autocommit=False)
        admin.close()


def _pending(consumer: Any, topics: set[str], committed: dict[Any, int],
             ) -> dict[Any, tuple[int, int]]:
    """Per partition of `topics` with records after the group's commit: (commit, end). A
    partition the group never committed counts from its beginning."""
    from kafka import TopicPartition

    tps = [TopicPartition(t, p) for t in sorted(topics)
           for p in sorted(consumer.partitions_for_topic(t) or ())]
    if not tps:
        return {}
    ends = consumer.end_offsets(tps)
    begins = consumer.beginning_offsets(tps)
    pending = {}
    for tp in tps:
        start = max(committed.get(tp, begins[tp]), begins[tp])  # retention may have passed it
        if ends[tp] > start:
            pending[tp] = (start, ends[tp])
    return pending


def _read(consumer: Any, pending: dict[Any, tuple[int, int]], limit: int,
          ) -> list[tuple[str, datetime]]:
    """(key, timestamp) of the pending records: up to `limit` per partition, in offset order."""
    if not pending:
        return []
    consumer.assign(list(pending))
    wanted = {tp: min(end, start + limit) for tp, (start, end) in pending.items()}
    for tp, (start, _) in pending.items():
        consumer.seek(tp, start)
    found: list[tuple[str, datetime]] = []
    left = set(pending)
    while left:
        polled = consumer.poll(timeout_ms=500, max_records=2_000)
        if not polled:
            break  # nothing more arrives (a compacted or transactional gap): what we have
        for tp, batch in polled.items():
            for record in batch:
                if record.offset < wanted[tp]:
                    key = record.key.decode("utf-8", "replace") if record.key else ""
                    found.append((key, datetime.fromtimestamp(record.timestamp / 1000, UTC)))
            if consumer.position(tp) >= wanted[tp]:
                left.discard(tp)
                consumer.pause(tp)
    return found


FIRST_LOOK_S = 6.0  # a page waits this long for the very first look, then shows n/a


class BacklogView:
    """The latest look at the broker, refreshed in the background at most every CACHE_S
    seconds while pages ask, so a page never waits on Kafka (except up to FIRST_LOOK_S for
    the first look). A broker that cannot be reached gives None and the sentence why."""

    def __init__(self, settings: Settings,
                 read: Callable[[Settings], Backlog] = read_backlog) -> None:
        self.settings = settings
        self._read = read
        self._lock = threading.Lock()
        self._last: tuple[Backlog | None, str] | None = None
        self._taken = 0.0
        self._refresh: threading.Thread | None = None

    def get(self) -> tuple[Backlog | None, str]:
        """(the backlog, "") or (None, why not)."""
        with self._lock:
            due = time.monotonic() - self._taken >= CACHE_S
            if due and (self._refresh is None or not self._refresh.is_alive()):
                self._refresh = threading.Thread(target=self._look, name="console-backlog",
                                                 daemon=True)
                self._refresh.start()
            refresh = self._refresh
        if self._last is None and refresh is not None:
            refresh.join(FIRST_LOOK_S)
        return self._last or (None, "the Kafka broker has not answered yet: reload in a few "
                                    "seconds, or see the Health page")

    def _look(self) -> None:
        from contactsync.console.health import bounded, sentence

        try:
            found: tuple[Backlog | None, str] = (
                bounded(lambda: self._read(self.settings), "the Kafka broker"), "")
        except Exception as exc:
            found = (None, sentence(exc))
        self._last, self._taken = found, time.monotonic()
