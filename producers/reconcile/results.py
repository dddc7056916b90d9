"""Following a run's results (`reconcile --wait`): who would take the commands, and each
user's result of the run as it comes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import CoordinatorNotAvailableError, KafkaError

from contactsync.errors import KafkaUnavailable
from contactsync.kafka.io import make_consumer
from contactsync.kafka.topics import SYNC_RESULTS, topic_name
from contactsync.schemas.envelope import MessageError, decode
from contactsync.schemas.messages import SyncResult
from contactsync.settings import Settings

QUIET_NOTE_S = 10.0  # `reconcile --wait` says it is still waiting at least this often


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
