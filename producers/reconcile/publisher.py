"""The reconcile's commands on `sync.commands`: a `full_sync` per user, keyed by the user id
exactly as the router keys its commands (the same key lands on the same partition, so the
applier runs a user's reconcile in that user's order and it never races the near-real-time
work of that user)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from kafka import KafkaProducer

from contactsync.kafka.io import make_producer
from contactsync.kafka.publish import Outgoing, Publisher
from contactsync.kafka.topics import SYNC_COMMANDS, topic_name
from contactsync.schemas.messages import CommandKind, SyncCommand
from contactsync.settings import Settings

COMMAND_TTL_S = 3600.0  # a reconcile command not taken within this is dropped as `expired`
_COMMAND_IDS = uuid.UUID("0e7d9a3c-6b1f-4f2e-8a55-3c9d1e7b2f60")  # namespace of command ids


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
        sent = Publisher(self._producer).publish([
            Outgoing(self.topic, c.user_id, c, trace_id=c.run_id,
                     event_id=command_event_id(c.run_id, c.user_id)) for c in commands])
        return [int(metadata.partition) for metadata in sent]

    def close(self) -> None:
        if self._producer is not None and self._owns_producer:
            self._producer.close(timeout=10)
            self._producer = None
