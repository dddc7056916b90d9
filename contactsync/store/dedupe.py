"""Processed event ids, per consumer group: at-least-once delivery made idempotent.

Remember an event in the same transaction as its effects (`store.transaction()`), so a crash
can never leave an event marked processed without its effects, or the other way round.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from contactsync.store.base import Repository, insert_if_absent, utcnow
from contactsync.store.tables import processed_events


class ProcessedEventRepository(Repository):
    def check_and_remember(
        self, consumer_group: str, event_id: str, *, at: datetime | None = None
    ) -> bool:
        """Record the event; True the first time, False if the group has seen it already.

        One INSERT ... ON CONFLICT DO NOTHING: two consumers racing on the same event cannot
        both get True.
        """
        values = {
            "consumer_group": consumer_group,
            "event_id": event_id,
            "processed_at": at or utcnow(),
        }
        with self._writing() as conn:
            return insert_if_absent(conn, processed_events, values)

    def seen(self, consumer_group: str, event_id: str) -> bool:
        query = select(processed_events.c.event_id).where(
            processed_events.c.consumer_group == consumer_group,
            processed_events.c.event_id == event_id,
        )
        with self._reading() as conn:
            return conn.execute(query).first() is not None

    def prune(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Forget events processed more than `older_than` ago; returns how many."""
        cutoff = (now or utcnow()) - older_than
        with self._writing() as conn:
            result = conn.execute(
                processed_events.delete().where(processed_events.c.processed_at < cutoff)
            )
        return result.rowcount
