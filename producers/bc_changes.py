"""producers/bc_changes: BC hints in, full contact snapshots out (docs/architecture.md "Flow", 1,
2, 9).

    bc.notifications (hints, key company id) --+
    polling timer ------------------------------+--> one `lastModifiedDateTime gt W - overlap`
                                                      query per round
                                                 --> bc.contact.changes (key BC contact id)

A *round* is one query: every contact BC reports modified after the company's watermark minus
`overlap` is published as a `bc.contact.changed` (kind upsert, the full contact as BC returned
it), and every `deleted` hint received since the last round as kind deleted (the id comes from
the hint's resource, `.../contacts(<id>)`: BC has nothing else to read for a deletion).

- Hints are hints (decision 1): `created`, `updated` and `collection` notifications only ask for
  a round. A hint on a quiet feed starts a round at once (no fixed gathering delay: it would
  be a latency floor); under load rounds start at most every `coalesce_seconds`, and every
  hint that arrived meanwhile (or in BC's own 30 s window, batched into one POST) is answered
  by that one query (decision 2); so is a `collection` notification (its filter is always at
  or after our watermark), and so is a missed one, by the timer.
- The timer runs a round every `poll_interval` seconds (30 s) while a BC subscription is live,
  or every `fallback_poll_interval` (5 s) when there is none: BC says it offers no webhooks on
  contacts (`webhook_supported()`, asked at start; a failed answer counts as "no"), or it
  refused the subscription POST (the subscriptions role stores what it holds: no unexpired
  BC subscription of this company in the store means none is live).
- Deletions without webhooks: BC has nothing to query for a deleted record, so while no
  subscription is live, every `deletion_scan_interval` seconds (60 s) the feed lists the ids
  of the company's persons (`$select=id` pages) and compares them with the BC ids the links
  hold (read before the listing, so a link made meanwhile is not taken for a deletion). Each
  missing id is confirmed with a GET (404: gone; still there: no longer a person, which the
  next round's snapshot covers) and published as kind deleted by the next round. More missing
  ids than the mass-delete rail allows (10% and 20 of the links) are left to the reconcile,
  which stops at the same rail, instead of emptying folders on a doubtful listing.
- The watermark (the largest `lastModifiedDateTime` seen) is stored per company id and advances
  only after the broker acknowledged every message of the round (flush, then each future):
  a round that fails publishes again next time, never skips. The overlap re-reads contacts
  committed out of order around the watermark; those already published with the same ETag are
  not published again (remembered in memory; after a restart one duplicate is harmless).
- The feed runs on the one Kafka worker (`kafka.worker`, group `contactsync-bc-changes` on
  `bc.notifications`): a poll's hints are one group, the handler answers them with one round
  and returns its messages; the worker publishes them, and once every one is acked the
  watermark advances and the hints' offsets are committed (at least once, decision 9). A failed
  round is retried with the one retry policy's backoff, never dead-lettered (a deletion hint
  holds the only copy of its id); a record that cannot be decoded, or is not a hint, goes to
  `deadletter`. The timer's rounds and the deletion scans run between the worker's polls.
- First start of a company (no watermark stored): the watermark starts at *now minus overlap*.
  History is not replayed into the stream (that would flood it with every contact ever); the
  reconcile job (`full_sync`) covers the past. Our clock stands in for BC's there, so a skew
  larger than the overlap can miss edits of the first seconds; reconcile covers those too.

The BC client is async: the feed runs it on its `Bridge` (one event loop, `loop`), in the thread
that calls `run` / `run_round`. Build the client on that same loop.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaProducer

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import NotFound, ServiceError
from contactsync.credential_health import when_credential_works
from contactsync.engine.links import canon_bc_id
from contactsync.engine.rails import mass_delete_stop
from contactsync.errors import ContactsyncError
from contactsync.kafka.bridge import Bridge
from contactsync.kafka.publish import Outgoing, Publish, Publisher
from contactsync.kafka.topics import BC_CONTACT_CHANGES, BC_NOTIFICATIONS, topic_name
from contactsync.kafka.worker import Worker, WorkRecord, build_worker, by_record
from contactsync.logs import get_logger
from contactsync.retry import RetryPolicy, backoff_delay
from contactsync.schemas.contacts import BcContact
from contactsync.schemas.messages import (
    BcChangeKind,
    BcContactChanged,
    BcNotification,
    bc_change_event_id,
)
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import SubscriptionService
from contactsync.sync.services import ConfigError, azure_credential

GROUP_ID = "contactsync-bc-changes"
DEFAULT_POLL_INTERVAL = 30.0
DEFAULT_FALLBACK_POLL_INTERVAL = 5.0
DEFAULT_DELETION_SCAN_INTERVAL = 60.0
# The store's word on a live BC subscription is re-read at most this often: not once per round
# (a query per round cost about 0.03 ms of CPU per propagated change); the mode follows within it.
SUBSCRIBED_TTL_S = 5.0
PERSONS = "type eq 'Person'"
_RAIL_SHARE: float = UserSetup.model_fields["max_delete_share"].default
_RAIL_FLOOR: int = UserSetup.model_fields["max_delete_floor"].default
DEFAULT_OVERLAP = timedelta(seconds=2)
DEFAULT_COALESCE_S = 0.05  # at most ~20 queries a second however many hints come
MIN_GATHER_S = 0.005  # hints already on their way still share the round
# Hints are retried until BC and the broker are back (never dead-lettered: a deletion hint
# carries the only copy of its contact id), backing off up to 30 s.
HINTS_RETRY = RetryPolicy(max_attempts=sys.maxsize, base_delay=1.0, max_delay=30.0)
_CONTACT_ID = re.compile(r"contacts\(([^)]+)\)\s*$", re.IGNORECASE)


def _log() -> Any:
    return get_logger("contactsync.bc_changes")


def contact_id_from_resource(resource: str) -> str | None:
    """`api/v2.0/companies(...)/contacts(<id>)` (relative or absolute) -> `<id>`, else None."""
    path = resource.split("?", 1)[0].strip().rstrip("/")
    m = _CONTACT_ID.search(path)
    if m is None:
        return None
    return m.group(1).strip().strip("'{}") or None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _PendingDelete:
    contact_id: str
    last_modified: datetime | None
    trace_id: str | None


@dataclass
class RoundReport:
    """What one round did."""

    watermark_before: datetime
    watermark_after: datetime
    upserts: int = 0  # snapshots published
    deletes: int = 0  # deletions published
    unchanged: int = 0  # re-read in the overlap with an ETag already published: skipped
    duration_s: float = 0.0


@dataclass
class _Round:
    """A round queried, not yet acked: what settling it changes."""

    report: RoundReport
    deletes: list[_PendingDelete]
    highest: datetime
    started: float  # perf_counter
    messages: list[Outgoing] = field(default_factory=list)
    fresh: dict[str, tuple[datetime | None, str]] = field(default_factory=dict)


class UnexpectedType(ContactsyncError):
    """A record on bc.notifications that is not a BC notification (dead-lettered)."""


class BcChangeFeed:
    """The change feed of one BC company (the client's)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        bc_client: BcClient,
        producer: KafkaProducer | None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        fallback_poll_interval: float = DEFAULT_FALLBACK_POLL_INTERVAL,
        deletion_scan_interval: float = DEFAULT_DELETION_SCAN_INTERVAL,
        overlap: timedelta = DEFAULT_OVERLAP,
        coalesce_seconds: float = DEFAULT_COALESCE_S,
        group_id: str = GROUP_ID,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bc = bc_client
        self.producer = producer
        self.bridge = Bridge(loop)  # its own loop unless given one (the caller's clients')
        self.poll_interval = poll_interval
        self.fallback_poll_interval = fallback_poll_interval
        self.deletion_scan_interval = deletion_scan_interval
        self.overlap = overlap
        self.coalesce_seconds = coalesce_seconds
        self.group_id = group_id
        self._changes_topic = topic_name(settings, BC_CONTACT_CHANGES)
        self._pending_deletes: dict[str, _PendingDelete] = {}
        self._round_requested = False
        self._last_round_at = float("-inf")  # monotonic start of the last round
        self._published: dict[str, tuple[datetime | None, str]] = {}  # id -> (modified, etag)
        self._next_timer = 0.0  # monotonic: the timer's next round
        self._retry_at = 0.0  # monotonic: after a failed timer round, not before this
        self._failures = 0  # timer rounds failed in a row
        self.webhooks: bool | None = None  # None until `start`
        self.rounds = 0  # successful rounds, for logs and tests
        self.failed_rounds = 0
        self.scans = 0  # deletion scans (no live subscription), for logs and tests
        self._scanned_gone: set[str] = set()  # queued by a scan, still linked: not again
        self._next_scan = 0.0  # monotonic; the first scan at once (deletions while stopped)
        self._was_subscribed: bool | None = None
        self._subscribed_until = float("-inf")  # monotonic: `_was_subscribed` holds until

    # --- setup ---------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.bridge.loop

    @property
    def company_id(self) -> str:
        return self.bc.company_id

    def subscribed(self) -> bool:
        """Is a BC subscription on this company's contacts live? BC must offer webhooks on
        contacts and the subscriptions role must hold an unexpired one (it stores none when
        BC refused the POST). Re-read from the store at most every SUBSCRIBED_TTL_S."""
        if self._was_subscribed is not None and time.monotonic() < self._subscribed_until:
            return self._was_subscribed
        self._subscribed_until = time.monotonic() + SUBSCRIBED_TTL_S
        live = False
        if self.webhooks:
            now = datetime.now(UTC)
            try:
                live = any(_aware(s.expiration) > now for s in self.store.subscriptions.list_all(
                    service=SubscriptionService.BC, company=self.company_id))
            except Exception as exc:  # the store away: poll as without webhooks (the safe side)
                _log().warning("could not read the BC subscription from the store",
                               error=str(exc))
        if live != self._was_subscribed:
            self._was_subscribed = live
            _log().info("bc change feed mode", company=self.company_id,
                        mode="webhooks" if live else "polling, with deletion scans")
        return live

    @property
    def interval(self) -> float:
        """Seconds between timer rounds: shorter while no BC subscription is live."""
        return self.poll_interval if self.subscribed() else self.fallback_poll_interval

    def start(self) -> None:
        """Ask BC whether contacts have webhooks; make sure the company has a watermark."""
        if self.webhooks is None:
            try:
                self.webhooks = self.bridge.run(self.bc.webhook_supported())
            except ServiceError as exc:
                _log().warning("could not ask BC about webhooks; polling as without them",
                               error=str(exc))
                self.webhooks = False
            self._subscribed_until = float("-inf")  # known now: ask the store afresh
            _log().info("bc change feed", company=self.company_id, webhooks=self.webhooks,
                        interval_s=self.interval)
            self.watermark()  # each round reads it again: once here is enough

    def watermark(self) -> datetime:
        """The stored watermark; on a company's first start, now minus the overlap (stored)."""
        stored = self.store.state.get_watermark(self.company_id)
        if stored is not None:
            return _aware(stored)
        initial = datetime.now(UTC) - self.overlap
        self.store.state.set_watermark(self.company_id, initial)
        _log().info("no watermark yet: starting from now (the reconcile job covers the past)",
                    company=self.company_id, watermark=initial.isoformat())
        return initial

    # --- hints ---------------------------------------------------------------------------

    def add_hint(self, note: BcNotification, trace_id: str | None = None) -> None:
        """Take one notification: a deletion is remembered for the next round; any hint of
        this company asks for a round."""
        if note.company_id and note.company_id.strip("{}").lower() != self.company_id.lower():
            _log().warning("hint for another company ignored", company=note.company_id,
                           subscription_id=note.subscription_id)
            return
        self._round_requested = True
        if note.change_type.lower() != "deleted":
            return
        contact_id = contact_id_from_resource(note.resource)
        if contact_id is None:
            _log().warning("deleted hint without a contact id in its resource",
                           subscription_id=note.subscription_id)
            return
        self._pending_deletes[contact_id] = _PendingDelete(contact_id, note.last_modified,
                                                           trace_id)

    @property
    def round_requested(self) -> bool:
        return self._round_requested

    # --- a round -------------------------------------------------------------------------

    def run_round(self) -> RoundReport:
        """One query, its snapshots and the pending deletions published and acknowledged, then
        the watermark advanced. Raises a `RetryableError` (BC or the broker away) with nothing
        advanced; the pending deletions stay for the next round."""
        self.start()
        try:
            done = self.bridge.run(self._collect())
            Publisher(self._producer()).publish(done.messages)
        except BaseException:
            self.failed_rounds += 1
            raise
        return self._settle_round(done)

    def round_to_publish(self) -> Publish:
        """One round's query now; its messages for the worker to publish, and the watermark
        advanced once the broker acked every one of them."""
        self.start()
        try:
            done = self.bridge.run(self._collect())
        except BaseException:
            self.failed_rounds += 1
            raise
        return Publish(done.messages, then=lambda: self._settle_round(done))

    async def _collect(self) -> _Round:
        """The pending deletions, then the query: what to publish; nothing advanced yet."""
        self._last_round_at = time.monotonic()
        watermark = self.watermark()
        self._round_requested = False
        done = _Round(RoundReport(watermark, watermark), list(self._pending_deletes.values()),
                      highest=watermark, started=time.perf_counter())
        for d in done.deletes:  # they happened before the query below: it cannot return them
            change = BcContactChanged(company_id=self.company_id, contact_id=d.contact_id,
                                      kind=BcChangeKind.DELETED, last_modified=d.last_modified)
            done.messages.append(self._outgoing(change, d.trace_id, "deleted"))
        done.report.deletes = len(done.deletes)
        flt = BcClient.changed_since_filter(watermark, self.overlap)
        async for page in self.bc.iter_contact_pages(flt):
            for raw in page:
                contact = BcContact.model_validate(raw)
                change = BcContactChanged.upsert(self.company_id, contact)
                modified = change.last_modified
                if modified is not None:
                    done.highest = max(done.highest, modified)
                if self._published.get(contact.id) == (modified, contact.etag):
                    done.report.unchanged += 1
                    continue
                done.messages.append(self._outgoing(change, None, change.version))
                done.fresh[contact.id] = (modified, contact.etag)
        return done

    def _settle_round(self, done: _Round) -> RoundReport:
        """Every message is on the broker: now, and only now, the round counts."""
        report = done.report
        report.upserts = len(done.fresh)
        report.watermark_after = done.highest
        if done.highest > report.watermark_before:
            report.watermark_after = _aware(self.store.state.advance_watermark(
                self.company_id, done.highest))
        for d in done.deletes:
            if self._pending_deletes.get(d.contact_id) == d:
                del self._pending_deletes[d.contact_id]
        self._remember(done.fresh, report.watermark_after)
        report.duration_s = time.perf_counter() - done.started
        self.rounds += 1
        self._next_timer = time.monotonic() + self.interval
        _log().info("bc round", company=self.company_id, upserts=report.upserts,
                    deletes=report.deletes, unchanged=report.unchanged,
                    watermark=report.watermark_after.isoformat())
        return report

    # --- deletions without webhooks --------------------------------------------------------

    def scan_deletions(self) -> list[str]:
        """Linked BC ids that are no longer in BC: queued as deletions for the next round
        (which is requested). Raises a `ServiceError` when BC fails; nothing is queued then."""
        self.start()
        gone = self.bridge.run(self._missing_persons())
        self._scanned_gone.update(gone)
        for contact_id in gone:
            self._pending_deletes.setdefault(contact_id, _PendingDelete(contact_id, None, None))
        if gone:
            self._round_requested = True
        self.scans += 1
        return gone

    async def _missing_persons(self) -> list[str]:
        linked = {canon_bc_id(i): i for i in self.store.links.linked_bc_ids()}  # before listing
        # Queued before and still linked: the applier has not dropped the link yet.
        self._scanned_gone &= set(linked.values())
        if not linked:
            return []
        present: set[str] = set()
        async for page in self.bc.iter_contact_pages(PERSONS, select=["id"]):
            present.update(canon_bc_id(str(c.get("id", ""))) for c in page)
        missing = sorted(linked[k] for k in linked.keys() - present
                         if linked[k] not in self._scanned_gone)
        if mass_delete_stop(len(missing), len(linked), 0, share=_RAIL_SHARE,
                            floor=_RAIL_FLOOR) is not None:
            _log().warning("many linked BC contacts missing at once; left to the reconcile "
                           "(its mass-delete rail decides)", company=self.company_id,
                           missing=len(missing), linked=len(linked))
            return []
        gone = []
        for contact_id in missing:
            try:
                await self.bc.get_contact(contact_id)
            except NotFound:
                gone.append(contact_id)
        if gone:
            _log().info("bc deletions found by id scan", company=self.company_id,
                        deleted=len(gone))
        return gone

    def _scan_if_due(self) -> None:
        """A deletion scan when none is live and the scan interval has passed; a failure is
        logged and the scan tried again after the next interval."""
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + self.deletion_scan_interval
        if self.subscribed():
            return
        try:
            self.scan_deletions()
        except Exception as exc:  # BC or the store away: the next scan tries again
            _log().warning("bc deletion scan failed; trying again later", error=str(exc),
                           retry_in_s=self.deletion_scan_interval)

    def _outgoing(self, change: BcContactChanged, trace_id: str | None,
                  version: str) -> Outgoing:
        return Outgoing(self._changes_topic, change.contact_id, change, trace_id=trace_id,
                        event_id=bc_change_event_id(change, version))

    def _remember(self, fresh: Mapping[str, tuple[datetime | None, str]],
                  watermark: datetime) -> None:
        """Keep only what the next query can return again: modified within the overlap."""
        self._published.update(fresh)
        floor = watermark - self.overlap
        self._published = {
            cid: seen for cid, seen in self._published.items()
            if seen[0] is not None and seen[0] > floor
        }

    # --- the role ------------------------------------------------------------------------

    def handle(self, records: Sequence[WorkRecord]) -> Publish | None:
        """The worker's handler: a poll's hints (gathered for `coalesce_seconds` after the last
        round started), answered by ONE round; their offsets are committed once the round's
        messages are acked. A record that is not a hint is dead-lettered by the worker."""
        for record in records:
            if not isinstance(record.payload, BcNotification):
                raise UnexpectedType(f"not a bc.notification: {record.envelope.type}")
            self.add_hint(record.payload, record.envelope.trace_id)
        return self.round_to_publish() if self._round_requested else None

    def _gather_seconds(self) -> float:
        return max(MIN_GATHER_S, self._last_round_at + self.coalesce_seconds - time.monotonic())

    def build_worker(self, *, retry: RetryPolicy | None = None, **consumer_overrides: Any
                     ) -> Worker:
        return build_worker(self.settings, self.group_id, (BC_NOTIFICATIONS,), self.handle,
                            group_by=_hints_together, retry=retry or HINTS_RETRY,
                            gather=self._gather_seconds, **consumer_overrides)

    def _timed(self) -> None:
        """Between polls: a deletion scan when due, and a round when the timer (or a scan)
        asks for one. A failed round is tried again after a backoff (the one policy's)."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        self._scan_if_due()
        if not (self._round_requested or now >= self._next_timer):
            return
        try:
            self.run_round()
        except Exception as exc:  # BC or the broker away: all of it again later
            self._failures += 1
            delay = backoff_delay(HINTS_RETRY, self._failures - 1, random.random())
            self._retry_at = time.monotonic() + delay
            self._round_requested = True
            _log().warning("bc round failed; retrying", error=str(exc),
                           retry_in_s=round(delay, 3))
            return
        self._failures = 0

    def run(self, stop: threading.Event, worker: Worker | None = None) -> None:
        """Rounds on hints and on the timer until `stop` is set (a first round right away)."""
        self.start()
        worker = worker or self.build_worker()
        if self.producer is None and worker.publisher is not None:
            self.producer = worker.publisher.producer  # the timer's rounds share it
        self._next_timer = time.monotonic()  # catch up at once from the stored watermark
        try:
            worker.run(stop, between=self._timed)
        finally:
            worker.close()
            self.close()

    def _producer(self) -> KafkaProducer:
        if self.producer is None:
            raise RuntimeError("the BC change feed has no producer: run it on a worker")
        return self.producer

    def close(self) -> None:
        """Close the loop if the feed made it. The BC client and a producer given to it
        belong to the caller."""
        self.bridge.close()  # a loop it was given stays open


def _hints_together(record: WorkRecord) -> Hashable:
    """Every hint of a poll in one group (one round answers them); anything else alone."""
    return "hints" if isinstance(record.payload, BcNotification) else by_record(record)


def run_bc_changes(
    settings: Settings,
    store: Store,
    stop: threading.Event,
    *,
    poll_interval: float | None = None,
    fallback_poll_interval: float = DEFAULT_FALLBACK_POLL_INTERVAL,
) -> None:
    """The `bc-changes` role: the configured company's feed until `stop` is set; its timer
    runs every `poll_interval` seconds (default: the settings' `bc_poll_seconds`) while a BC
    subscription is live."""
    if not (settings.bc_base_url and settings.bc_company):
        raise ConfigError("no Business Central configured: set CONTACTSYNC_BC_BASE_URL and "
                          "CONTACTSYNC_BC_COMPANY")
    bridge = Bridge()
    credential = azure_credential(settings)
    bc: BcClient | None = None
    try:
        bc = when_credential_works(lambda: bridge.run(BcClient.create(
            settings.bc_base_url, settings.bc_company, credential, scope=settings.bc_scope)),
            stop)
        if bc is None:
            return
        if poll_interval is None:
            poll_interval = settings.bc_poll_seconds
        BcChangeFeed(settings, store, bc, None, loop=bridge.loop, poll_interval=poll_interval,
                     fallback_poll_interval=fallback_poll_interval,
                     deletion_scan_interval=settings.bc_deletion_scan_seconds).run(stop)
    finally:
        try:
            if bc is not None:
                bridge.run(bc.aclose())
            if credential is not None:
                bridge.run(credential.close())
        finally:
            bridge.close()
