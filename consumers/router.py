"""consumers/router: which users does this concern? (docs/architecture.md "Flow", decisions 1, 8, 9)

    bc.contact.changes (key BC contact id)  ----+
                                                +--> Router --> sync.commands (key user id)
    graph.notifications (key subscription id) --+
    graph.lifecycle (key subscription id) ------+

- A BC change (upsert) goes, as a `bc_change` command, to every enabled user whose filter
  matches the snapshot, plus every enabled user holding a link to that BC id (so a contact
  that left a filter, was privacy-blocked or turned into a company is removed from the folder
  by the planner). Eligibility (Person, name, email, privacy) is the planner's call, not ours.
  A deletion goes to the link holders only. A change is routed once: the applier publishes
  the BC change its own write made and the change feed the same one later, under one id
  (`schemas.messages.bc_change_event_id`); the ids of the last 10,000 routed are remembered.
- A Graph change notification becomes a `graph_hint` for its (enabled) user; one per user per
  poll group, since one delta read answers them all (decision 2). A notification whose
  changeKey is the one our own last write recorded in the link is that write's echo and asks
  for nothing (docs/architecture.md 5): skipping the delta read leaves the delta link where it was,
  so a later read still returns everything since (a forged echo can only delay a read). A `missed`
  lifecycle event becomes a `sync` command; the other lifecycle events belong to the
  subscription keeper.

Routing reads the enabled setups and their parsed filters from a cache refreshed every
`refresh_seconds`, and looks the links of a whole poll group up in one query. Commands keep the
incoming envelope's trace id; their event id is derived from the input's event id and the user,
so a redelivered input yields the very same command ids. The handler returns the commands; the
worker publishes them and commits past a poll only once every command is acked (acks=all).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind
from sqlalchemy.exc import OperationalError

from contactsync import tracing
from contactsync.engine.bcfilter import ContactFilter, FilterError
from contactsync.engine.echoes import change_key_of, outlook_echo
from contactsync.engine.links import canon_bc_id
from contactsync.errors import StoreUnavailable
from contactsync.kafka.publish import Outgoing, Publish
from contactsync.kafka.topics import (
    BC_CONTACT_CHANGES,
    GRAPH_LIFECYCLE,
    GRAPH_NOTIFICATIONS,
    SYNC_COMMANDS,
    topic_name,
)
from contactsync.kafka.worker import RetryPolicy, Worker, WorkRecord, build_worker
from contactsync.logs import get_logger
from contactsync.schemas.messages import (
    BcChangeKind,
    BcContactChanged,
    CommandKind,
    GraphLifecycle,
    GraphNotification,
    LifecycleEvent,
    SyncCommand,
)
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store

GROUP_ID = "contactsync-router"
TOPICS = (BC_CONTACT_CHANGES, GRAPH_NOTIFICATIONS, GRAPH_LIFECYCLE)
MISSED_REASON = "missed notifications"
ROUTED_REMEMBERED = 10_000  # BC change ids routed lately: the feed's copy of one we routed
_COMMAND_IDS = uuid.UUID("5b0c1c1e-8f57-4c53-9d7e-3a1f0d2b6c41")  # namespace of command ids


def _log() -> Any:
    return get_logger("contactsync.router")


def command_event_id(source_event_id: str, user_id: str, kind: CommandKind) -> str:
    """The same input routed again yields the same command id (duplicates are recognisable)."""
    return uuid.uuid5(_COMMAND_IDS, f"{source_event_id}\x1f{user_id}\x1f{kind}").hex


def _may_be_echo(note: GraphNotification) -> bool:
    """A create or update naming its contact and version (what our own write would cause)."""
    return note.change_type.lower() in ("created", "updated") and bool(
        note.etag and note.contact_id)


def by_topic(record: WorkRecord) -> Hashable:
    """One group per topic and poll: one link lookup and one wait for the broker's acks for
    all of it (a group per partition paid that wait once per partition)."""
    return record.topic


@dataclass(frozen=True)
class RoutedUser:
    setup: UserSetup
    contact_filter: ContactFilter | None  # None: the filter does not parse, matches nothing


class SetupCache:
    """The enabled setups and their parsed filters, re-read at most every `refresh_seconds`."""

    def __init__(self, store: Store, refresh_seconds: float = 5.0) -> None:
        self._store = store
        self.refresh_seconds = refresh_seconds
        self._users: dict[str, RoutedUser] = {}
        self._absent: set[str] = set()
        self._loaded_at: float | None = None
        self._lock = threading.Lock()
        self._stopped: set[str] = set()  # stopped setups already logged: once, not per refresh

    def users(self) -> dict[str, RoutedUser]:
        with self._lock:
            now = time.monotonic()
            if self._loaded_at is None or now - self._loaded_at >= self.refresh_seconds:
                self._users = self._load()
                self._absent = set()
                self._loaded_at = now
            return self._users

    def is_enabled(self, user_id: str) -> bool:
        """In the cache, or (a user added since the last refresh) enabled in the store; a miss
        is remembered until the next refresh, so unknown users cost one read per period."""
        users = self.users()
        if user_id in users:
            return True
        if user_id in self._absent:
            return False
        setup = self._store.setups.get(user_id)
        if setup is not None and setup.syncs:
            self.invalidate()
            return True
        self._absent.add(user_id)
        return False

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = None

    def _load(self) -> dict[str, RoutedUser]:
        users: dict[str, RoutedUser] = {}
        for setup in self._store.setups.list_all(enabled=True):
            if setup.stopped_reason:  # shares another setup's folder: never synced
                if setup.user_id not in self._stopped:
                    self._stopped.add(setup.user_id)
                    _log().warning("setup stopped; not routed", user_id=setup.user_id,
                                   reason=setup.stopped_reason)
                continue
            try:
                parsed: ContactFilter | None = ContactFilter.parse(setup.contact_filter)
            except FilterError as exc:
                _log().warning("user filter does not parse; routing by links only",
                               user_id=setup.user_id, error=str(exc))
                parsed = None
            users[setup.user_id] = RoutedUser(setup, parsed)
        return users


class Router:
    """The router role: `handle` is the Worker's handler; `run` polls until stopped."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        refresh_seconds: float = 5.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = SetupCache(store, refresh_seconds)
        self._commands_topic = topic_name(settings, SYNC_COMMANDS)
        self.routed = 0  # commands published, for logs and tests
        # Ids of the BC changes whose commands were acked: the applier publishes a BC change
        # its write made, the feed publishes the same change (same id) later; routed once.
        self._routed_changes: OrderedDict[str, None] = OrderedDict()

    # --- the role ---

    def build_worker(self, *, retry: RetryPolicy | None = None, **consumer_overrides: Any
                     ) -> Worker:
        return build_worker(self.settings, GROUP_ID, TOPICS, self.handle, group_by=by_topic,
                            retry=retry, **consumer_overrides)

    def run(self, stop: threading.Event, worker: Worker | None = None) -> None:
        worker = worker or self.build_worker()
        try:
            worker.run(stop)
        finally:
            worker.close()

    def close(self) -> None:
        """Nothing of its own to close: the worker holds the producer."""

    # --- routing ---

    def handle(self, records: Sequence[WorkRecord]) -> Publish:
        """Route one poll group: the commands, for the worker to publish."""
        try:
            outgoing = self.route(records)
        except OperationalError as exc:  # the database is away or locked: worth retrying
            raise StoreUnavailable(f"state store unavailable: {exc}") from exc
        changes = [r.envelope.event_id for r in records if isinstance(r.payload, BcContactChanged)]

        def routed() -> None:
            self._remember_routed(changes)
            self.routed += len(outgoing)
            if outgoing:
                _log().debug("routed", commands=len(outgoing))

        return Publish(outgoing, then=routed)

    def route(self, records: Sequence[WorkRecord]) -> list[Outgoing]:
        """The commands for these records, in record order (no I/O but the DB reads)."""
        users = self.cache.users()
        bc_ids = {r.payload.contact_id for r in records
                  if isinstance(r.payload, BcContactChanged)}
        holders = self.store.links.users_for_bc_ids(bc_ids) if bc_ids else {}
        echo_keys = self._link_change_keys(records)
        out: list[Outgoing] = []
        hinted: set[tuple[str, CommandKind]] = set()
        changes_seen: set[str] = set()
        for record in records:
            payload = record.payload
            if isinstance(payload, BcContactChanged):
                if not self._first_copy(record.envelope.event_id, changes_seen):
                    continue
                linked = holders.get(canon_bc_id(payload.contact_id), [])
                for user_id in self._bc_targets(payload, users, linked):
                    out.append(self._outgoing(record, user_id, SyncCommand(
                        user_id=user_id, kind=CommandKind.BC_CHANGE, bc_change=payload,
                        reason=f"bc contact {payload.kind}")))
            elif isinstance(payload, GraphNotification):
                if self._is_our_echo(payload, echo_keys):
                    continue
                self._once(out, hinted, record, payload.user_id, CommandKind.GRAPH_HINT,
                           f"graph {payload.change_type}")
            elif isinstance(payload, GraphLifecycle):
                if payload.event is LifecycleEvent.MISSED:
                    self._once(out, hinted, record, payload.user_id, CommandKind.SYNC,
                               MISSED_REASON)
            else:
                _log().warning("unexpected message type on a router topic; ignored",
                               type=record.envelope.type, topic=record.topic,
                               partition=record.partition, offset=record.offset)
        return out

    def _first_copy(self, event_id: str, seen_now: set[str]) -> bool:
        """Whether this BC change was not routed yet (nor earlier in this poll)."""
        if event_id in self._routed_changes or event_id in seen_now:
            return False
        seen_now.add(event_id)
        return True

    def _remember_routed(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            self._routed_changes[event_id] = None
            self._routed_changes.move_to_end(event_id)
        while len(self._routed_changes) > ROUTED_REMEMBERED:
            self._routed_changes.popitem(last=False)

    def _bc_targets(self, change: BcContactChanged, users: dict[str, RoutedUser],
                    link_holders: Iterable[str]) -> list[str]:
        targets: dict[str, None] = {}  # ordered set
        if change.kind is BcChangeKind.UPSERT and change.snapshot is not None:
            snapshot = change.snapshot.model_dump(mode="json", by_alias=True)
            for user_id, user in users.items():
                if user.contact_filter is not None and user.contact_filter.matches(snapshot):
                    targets[user_id] = None
        for user_id in sorted(link_holders):
            if user_id in users:  # a disabled user's links wait until it is enabled again
                targets[user_id] = None
        return list(targets)

    def _link_change_keys(self, records: Sequence[WorkRecord]) -> dict[tuple[str, str], str]:
        """The links' changeKeys for the poll's notifications that may be echoes, one query
        per user (a query per notification was a third of the router's CPU)."""
        ids = [(r.payload.user_id, r.payload.contact_id) for r in records
               if isinstance(r.payload, GraphNotification) and _may_be_echo(r.payload)]
        return self.store.links.graph_change_keys(ids) if ids else {}

    @staticmethod
    def _is_our_echo(note: GraphNotification, link_keys: dict[tuple[str, str], str]) -> bool:
        held = link_keys.get((note.user_id, note.contact_id))
        return _may_be_echo(note) and outlook_echo(change_key_of(note.etag), held)

    def _once(self, out: list[Outgoing], seen: set[tuple[str, CommandKind]], record: WorkRecord,
              user_id: str, kind: CommandKind, reason: str) -> None:
        if (user_id, kind) in seen or not self.cache.is_enabled(user_id):
            return
        seen.add((user_id, kind))
        out.append(self._outgoing(record, user_id,
                                  SyncCommand(user_id=user_id, kind=kind, reason=reason)))

    def _outgoing(self, record: WorkRecord, user_id: str, command: SyncCommand) -> Outgoing:
        with tracing.span("router route", parent=record.headers, kind=SpanKind.CONSUMER,
                          attributes={"contactsync.command": str(command.kind)}):
            headers = tracing.headers()
        return Outgoing(self._commands_topic, user_id, command, record.envelope.trace_id,
                        command_event_id(record.envelope.event_id, user_id, command.kind),
                        headers or None)
