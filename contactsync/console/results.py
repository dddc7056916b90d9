"""Follows `sync.results` so the pages show each user's last run of each kind as it arrives.

A daemon thread reads the topic from the beginning without a consumer group (it commits
nothing) and keeps only the newest result per (user, command kind); dry runs are kept apart
(their plan is shown, they are not a user's "last Sync"). When the broker cannot be reached
the pages show what the store knows and the thread tries again.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from contactsync.console.views import LastRun, ResultsView
from contactsync.logs import get_logger
from contactsync.settings import Settings

RETRY_S = 10.0


def _log() -> Any:
    return get_logger("contactsync.console")


class ResultsFeed:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._newest: dict[tuple[str, str], LastRun] = {}
        self._dry_runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow_until_stopped,
                                        name="console-results", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def view(self) -> ResultsView:
        return ResultsView(self.newest, self.dry_runs)

    def newest(self) -> dict[tuple[str, str], LastRun]:
        with self._lock:
            return dict(self._newest)

    def dry_runs(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._dry_runs)

    def take(self, payload: Any, timestamp_ms: int) -> None:
        """Remember one `SyncResult` (anything else on the topic is ignored)."""
        from contactsync.schemas.messages import SyncResult

        if not isinstance(payload, SyncResult):
            return
        at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        with self._lock:
            if payload.dry_run:
                self._dry_runs[payload.user_id] = {
                    "at": at, "kind": str(payload.kind), "status": str(payload.status),
                    "summary": payload.summary, "skipped": payload.skipped,
                    "reason": payload.reason, "run_id": payload.run_id,
                    "plan": list(payload.plan)}
                return
            key = (payload.user_id, str(payload.kind))
            known = self._newest.get(key)
            if known is None or known.at is None or known.at <= at:
                self._newest[key] = LastRun(at, str(payload.status), payload.reason)

    def _follow_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # the broker is down or not set up: try again later
                _log().warning("console cannot read sync results", error=str(exc))
            self._stop.wait(RETRY_S)

    def _follow(self) -> None:
        from kafka import TopicPartition

        from contactsync.kafka.io import make_consumer
        from contactsync.kafka.topics import SYNC_RESULTS, topic_name
        from contactsync.schemas.envelope import MessageError, decode

        topic = topic_name(self.settings, SYNC_RESULTS)
        consumer = make_consumer(self.settings, None, client_id="contactsync-console")
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                return  # no topic yet: the retry finds it once `topics ensure` ran
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        try:
                            self.take(decode(record.value).payload, record.timestamp)
                        except MessageError:
                            continue
        finally:
            consumer.close(autocommit=False)
