"""The BC change feed: hints in, full contact snapshots out (DESIGN.md decisions 1 and 2).

Every round is ONE query, `lastModifiedDateTime gt watermark - overlap`, however many hints
came in: a burst of webhook notifications, a `collection` notification and a missed one are
all answered by it. Each changed contact's snapshot goes to `bc.contact.changes` keyed by its
id; a `deleted` notification (the only way BC tells of a deletion) becomes a deletion message.
The watermark (the newest modification seen) is stored per company and advances only after the
broker acknowledged every message of the round; the notifications' offsets are committed only
then too. Rounds run on hints and on a timer (the polling fallback when BC offers no contact
webhooks). A first start has no watermark: it starts from now, not from the whole history,
which the full reconcile covers.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from contactsync.clients.bc import BcClient, parse_bc_datetime
from contactsync.kafka.io import make_consumer, make_producer
from contactsync.kafka.topics import BC_CONTACT_CHANGES, BC_NOTIFICATIONS, topic_name
from contactsync.logs import get_logger
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.sync.services import azure_credential
from schemas.contacts import BcContact
from schemas.envelope import MessageError, decode, encode, wrap
from schemas.messages import BcChangeKind, BcContactChanged, BcNotification

GROUP_ID = "contactsync-bc-changes"
OVERLAP = timedelta(seconds=2)
_CONTACT_ID = re.compile(r"contacts\(([^)]+)\)", re.IGNORECASE)


def deleted_contact_id(resource: str) -> str | None:
    """`.../contacts(<id>)` -> id (quotes stripped); None for a collection resource."""
    found = _CONTACT_ID.search(resource)
    return found.group(1).strip("'") if found else None


class BcChangeFeed:
    def __init__(self, settings: Settings, store: Store, bc: BcClient,
                 producer: KafkaProducer, *, poll_seconds: float = 30.0) -> None:
        self.settings, self.store, self.bc, self.producer = settings, store, bc, producer
        self.poll_seconds = poll_seconds
        self.topic = topic_name(settings, BC_CONTACT_CHANGES)
        self.rounds = 0  # queries made, for tests and logs

    @property
    def company(self) -> str:
        return self.bc.company_id

    async def round(self, deleted_ids: list[str] | None = None) -> int:
        """One query since the watermark; publish; advance the watermark. Messages sent."""
        watermark = self.store.state.get_watermark(self.company)
        if watermark is None:
            watermark = datetime.now(UTC) - OVERLAP
            self.store.state.set_watermark(self.company, watermark)
        changed = await self.bc.list_changed_since(watermark, overlap=OVERLAP)
        self.rounds += 1
        futures = []
        newest = watermark
        for contact in changed:
            stamp = contact.get("lastModifiedDateTime")
            modified = parse_bc_datetime(str(stamp)) if stamp else None
            if modified is not None and modified > newest:
                newest = modified
            change = BcContactChanged(
                company_id=self.company, contact_id=str(contact["id"]), kind=BcChangeKind.UPSERT,
                snapshot=BcContact.model_validate(contact), last_modified=modified)
            futures.append(self._send(change))
        for contact_id in deleted_ids or []:
            futures.append(self._send(BcContactChanged(
                company_id=self.company, contact_id=contact_id, kind=BcChangeKind.DELETED)))
        self.producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)  # raises if the broker did not take it: no advance
        if newest > watermark:
            self.store.state.advance_watermark(self.company, newest)
        return len(futures)

    def _send(self, change: BcContactChanged) -> Any:
        return self.producer.send(self.topic, key=change.contact_id.encode(),
                                  value=encode(wrap(change)))


def _hints(consumer: KafkaConsumer) -> tuple[bool, list[str]]:
    """Drain what the webhook published: (any hint at all, ids of deleted contacts)."""
    hinted, deleted = False, []
    for records in consumer.poll(timeout_ms=500).values():
        for record in records:
            try:
                notification = decode(record.value).payload
            except MessageError:
                continue  # the worker-based roles dead-letter; a hint can only be ignored
            if not isinstance(notification, BcNotification):
                continue
            hinted = True
            if notification.change_type == "deleted":
                contact_id = deleted_contact_id(notification.resource)
                if contact_id:
                    deleted.append(contact_id)
    return hinted, deleted


def run_bc_changes(settings: Settings, store: Store, stop: threading.Event,
                   poll_seconds: float = 30.0) -> None:
    """The `bc-changes` role: rounds on hints and on the timer, until `stop`."""
    log = get_logger("contactsync.bc_changes")
    loop = asyncio.new_event_loop()
    credential = azure_credential()
    bc = loop.run_until_complete(
        BcClient.create(settings.bc_base_url, settings.bc_company, credential))
    producer = make_producer(settings.kafka_bootstrap_servers)
    consumer = make_consumer(settings.kafka_bootstrap_servers, GROUP_ID,
                             topic_name(settings, BC_NOTIFICATIONS))
    feed = BcChangeFeed(settings, store, bc, producer, poll_seconds=poll_seconds)
    try:
        supported = loop.run_until_complete(bc.webhook_supported())
        interval = poll_seconds if supported else min(poll_seconds, 5.0)
        log.info("bc change feed running", webhooks=supported, poll_seconds=interval)
        last_round = 0.0
        pending_deleted: list[str] = []
        hinted = True  # one round at start: catch up from the stored watermark
        while not stop.is_set():
            more, deleted = _hints(consumer)
            hinted, pending_deleted = hinted or more, pending_deleted + deleted
            if not (hinted or time.monotonic() - last_round >= interval):
                continue
            try:
                loop.run_until_complete(feed.round(pending_deleted))
            except Exception as exc:  # BC or the broker away: keep the hints, try again
                log.warning("bc change round failed; retrying", error=exc)
                stop.wait(2.0)
                continue
            consumer.commit()  # the hints are answered only now
            hinted, pending_deleted, last_round = False, [], time.monotonic()
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
        loop.run_until_complete(bc.aclose())
        if credential is not None:
            loop.run_until_complete(credential.close())
        loop.close()
