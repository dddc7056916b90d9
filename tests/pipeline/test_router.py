"""The router on the real broker: which users each BC change and Graph notification reaches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from contactsync.consumers.router import MISSED_REASON, Router
from contactsync.engine.links import Link, LinkOrigin
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import (
    BC_CONTACT_CHANGES,
    GRAPH_LIFECYCLE,
    GRAPH_NOTIFICATIONS,
    SYNC_COMMANDS,
    ensure_topics_at,
    topic_name,
)
from contactsync.kafka.worker import RetryPolicy, Worker
from contactsync.schemas.contacts import BcContact
from contactsync.schemas.envelope import Envelope, decode, encode, wrap
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
from tests.kafka_fixtures import read_topic
from tests.store.legacy import mark_sharing

pytestmark = pytest.mark.kafka

FAST = RetryPolicy(max_attempts=1000, base_delay=0.01, max_delay=0.05, timeout=0.5)
SEATTLE, REDMOND, HOLDER, OFF = "sea@contoso.test", "red@contoso.test", "holder@contoso.test", \
    "off@contoso.test"
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    return kafka_settings


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store.open(settings.database_url)
    for user, filt, enabled in (
        (SEATTLE, {"city": "Seattle"}, True),
        (REDMOND, {"city": "@redmond"}, True),
        (HOLDER, {"city": "London"}, True),
        (OFF, {}, False),  # would match everything, and holds a link: still gets nothing
    ):
        store.setups.add(UserSetup(user_id=user, mailbox=user, contact_filter=filt,
                                   enabled=enabled))
    for user in (HOLDER, OFF):
        store.links.upsert(Link(user, "c-1", f"g-{user}", origin=LinkOrigin.BC))
    try:
        yield store
    finally:
        store.close()


def produce(settings: Settings, base: str, items: Sequence[tuple[str, BaseModel, str]]) -> None:
    """(key, payload, trace id) each, in order."""
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        for key, payload, trace in items:
            producer.send(topic_name(settings, base), key=key.encode(),
                          value=encode(wrap(payload, trace_id=trace)))
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


def read_all(settings: Settings, base: str) -> list[tuple[str, Envelope[Any]]]:
    """Every message on the topic so far, as (key, envelope)."""
    return [(r.key.decode(), decode(r.value)) for r in read_topic(settings, base)]


def drive(worker: Worker, inputs: int, timeout: float = 20.0) -> None:
    """Poll until the worker has handled `inputs` records (the handler acks before returning)."""
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < inputs:
        assert time.monotonic() < deadline, "the router did not get there in time"
        seen += worker.run_once()


def route(settings: Settings, store: Store, inputs: int) -> list[tuple[str, SyncCommand, str]]:
    router = Router(settings, store, refresh_seconds=60)
    worker = router.build_worker(retry=FAST)
    try:
        drive(worker, inputs)
    finally:
        worker.close()
        router.close()
    commands = []
    for key, envelope in read_all(settings, SYNC_COMMANDS):
        assert key == envelope.payload.user_id, "commands are keyed by user"
        commands.append((key, envelope.payload, envelope.trace_id))
    return commands


def _change(contact_id: str, kind: BcChangeKind, **fields: Any) -> BcContactChanged:
    snapshot = None
    if kind is BcChangeKind.UPSERT:
        snapshot = BcContact.model_validate({"id": contact_id, "type": "Person", **fields})
    return BcContactChanged(company_id="co", contact_id=contact_id, kind=kind, snapshot=snapshot,
                            last_modified=NOW)


def test_a_bc_change_reaches_matching_users_and_link_holders_only(settings: Settings,
                                                                  store: Store) -> None:
    produce(settings, BC_CONTACT_CHANGES, [
        ("c-1", _change("c-1", BcChangeKind.UPSERT, displayName="Ada", email="a@x.test",
                        city="Seattle"), "trace-up"),
        ("c-2", _change("c-2", BcChangeKind.UPSERT, displayName="Bob", email="b@x.test",
                        city="REDMOND"), "trace-red"),
        # A company: still routed by filter; whether it syncs is the planner's decision.
        ("c-3", _change("c-3", BcChangeKind.UPSERT, displayName="Co", type="Company",
                        city="Tokyo"), "trace-none"),
    ])
    commands = route(settings, store, inputs=3)
    reached = sorted((user, cmd.bc_change.contact_id, trace) for user, cmd, trace in commands
                     if cmd.bc_change is not None)
    assert reached == [
        (HOLDER, "c-1", "trace-up"),  # left its filter (London), but holds the link
        (REDMOND, "c-2", "trace-red"),  # case-insensitive filter
        (SEATTLE, "c-1", "trace-up"),
    ]
    assert all(cmd.kind is CommandKind.BC_CHANGE for _, cmd, _ in commands)
    seattle = next(cmd for user, cmd, _ in commands if user == SEATTLE)
    assert seattle.bc_change is not None and seattle.bc_change.snapshot is not None
    assert seattle.bc_change.snapshot.email == "a@x.test", "the snapshot travels along"


def test_a_deletion_reaches_the_enabled_link_holders_only(settings: Settings, store: Store) -> None:
    produce(settings, BC_CONTACT_CHANGES, [
        ("c-1", _change("c-1", BcChangeKind.DELETED), "trace-del"),
        ("c-9", _change("c-9", BcChangeKind.DELETED), "trace-nobody"),
    ])
    commands = route(settings, store, inputs=2)
    assert [(user, cmd.kind, cmd.bc_change and cmd.bc_change.kind, trace)
            for user, cmd, trace in commands] == [
        (HOLDER, CommandKind.BC_CHANGE, BcChangeKind.DELETED, "trace-del"),
    ]


def test_a_setup_sharing_another_setups_folder_is_never_routed(settings: Settings,
                                                               store: Store) -> None:
    twin = "twin@contoso.test"
    store.setups.add(UserSetup(user_id=twin, mailbox=twin, folder_name="Twin",
                               contact_filter={"city": "Seattle"}))
    store.links.upsert(Link(twin, "c-1", "g-twin", origin=LinkOrigin.BC))
    mark_sharing(store, twin, SEATTLE)
    produce(settings, BC_CONTACT_CHANGES, [
        ("c-1", _change("c-1", BcChangeKind.UPSERT, displayName="Ada", email="a@x.test",
                        city="Seattle"), "trace-up"),
    ])
    assert sorted(user for user, _, _ in route(settings, store, inputs=1)) == [HOLDER, SEATTLE]


def test_graph_notifications_become_hints_and_missed_becomes_a_sync(settings: Settings,
                                                                    store: Store) -> None:
    def note(user: str) -> GraphNotification:
        return GraphNotification(subscription_id=f"sub-{user}", user_id=user,
                                 change_type="updated", resource="x", received_at=NOW)

    def life(user: str, event: LifecycleEvent) -> GraphLifecycle:
        return GraphLifecycle(subscription_id=f"sub-{user}", user_id=user, event=event,
                              received_at=NOW)

    produce(settings, GRAPH_NOTIFICATIONS, [
        (f"sub-{REDMOND}", note(REDMOND), "trace-hint"),
        (f"sub-{REDMOND}", note(REDMOND), "trace-hint-2"),  # same poll: one delta read is enough
        (f"sub-{OFF}", note(OFF), "trace-off"),  # disabled
        ("sub-ghost", note("ghost@contoso.test"), "trace-ghost"),  # no such user
        (f"sub-{SEATTLE}", life(SEATTLE, LifecycleEvent.MISSED), "trace-missed"),
        (f"sub-{HOLDER}", life(HOLDER, LifecycleEvent.REAUTHORIZATION_REQUIRED), "trace-reauth"),
        (f"sub-{HOLDER}", life(HOLDER, LifecycleEvent.SUBSCRIPTION_REMOVED), "trace-removed"),
    ])
    commands = route(settings, store, inputs=7)
    got = sorted((user, cmd.kind, cmd.reason, trace) for user, cmd, trace in commands)
    assert got == [
        (REDMOND, CommandKind.GRAPH_HINT, "graph updated", "trace-hint"),
        (SEATTLE, CommandKind.SYNC, MISSED_REASON, "trace-missed"),
    ]


def test_missed_on_the_lifecycle_topic_becomes_a_sync(settings: Settings, store: Store) -> None:
    # The webhook's topic for lifecycle events; the test above: an older webhook's, on
    # graph.notifications, which the router reads still.
    produce(settings, GRAPH_LIFECYCLE, [
        (f"sub-{SEATTLE}", GraphLifecycle(subscription_id=f"sub-{SEATTLE}", user_id=SEATTLE,
                                          event=LifecycleEvent.MISSED, received_at=NOW), "t-m"),
    ])
    got = [(user, cmd.kind, cmd.reason) for user, cmd, _ in route(settings, store, inputs=1)]
    assert got == [(SEATTLE, CommandKind.SYNC, MISSED_REASON)]


def _send_twice(settings: Settings, envelope: Envelope[Any], *, restart_between: bool,
                store: Store) -> None:
    """The same message twice, as a producer retry, a replay or a second publisher would; the
    router restarted between them or not."""
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        for copy in range(2):
            producer.send(topic_name(settings, BC_CONTACT_CHANGES), key=b"c-5",
                          value=encode(envelope))
            producer.flush(timeout=10)
            if restart_between or copy == 1:
                route(settings, store, inputs=1 if restart_between else 2)
    finally:
        producer.close(timeout=5)


def test_a_redelivered_input_yields_the_same_command_ids(settings: Settings, store: Store) -> None:
    """After a restart the router remembers nothing: the copy is routed again, to the same
    command ids (the applier skips a command it finished)."""
    envelope = wrap(_change("c-5", BcChangeKind.UPSERT, displayName="Cy", email="c@x.test",
                            city="Seattle"), trace_id="trace-dup")
    _send_twice(settings, envelope, restart_between=True, store=store)
    commands = read_all(settings, SYNC_COMMANDS)
    assert [key for key, _ in commands] == [SEATTLE, SEATTLE]
    first, second = (e for _, e in commands)
    assert first.event_id == second.event_id != envelope.event_id
    assert first.trace_id == "trace-dup"


def test_a_bc_change_published_twice_is_routed_once(settings: Settings, store: Store) -> None:
    """The applier publishes the BC change its write made, the change feed the same change
    later (one id): the second copy asks nobody for anything."""
    envelope = wrap(_change("c-5", BcChangeKind.UPSERT, displayName="Cy", email="c@x.test",
                            city="Seattle"), trace_id="trace-dup")
    _send_twice(settings, envelope, restart_between=False, store=store)
    assert [key for key, _ in read_all(settings, SYNC_COMMANDS)] == [SEATTLE]


def test_run_routes_until_stopped_and_sees_new_users_after_a_refresh(settings: Settings,
                                                                     store: Store) -> None:
    router = Router(settings, store, refresh_seconds=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,), daemon=True)
    thread.start()
    try:
        new = "new@contoso.test"
        router.cache.users()  # loaded before the user exists
        store.setups.add(UserSetup(user_id=new, mailbox=new, contact_filter={"city": "Oslo"}))
        time.sleep(0.3)
        produce(settings, BC_CONTACT_CHANGES, [
            ("c-7", _change("c-7", BcChangeKind.UPSERT, displayName="Ola", email="o@x.test",
                            city="Oslo"), "trace-oslo"),
        ])
        deadline = time.monotonic() + 20
        while router.routed < 1:
            assert time.monotonic() < deadline, "nothing routed"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the router stops when asked"
    assert [(key, e.payload.kind) for key, e in read_all(settings, SYNC_COMMANDS)] == [
        ("new@contoso.test", CommandKind.BC_CHANGE)]


def test_the_echo_of_our_own_outlook_write_asks_for_no_delta_read(settings: Settings,
                                                                  store: Store) -> None:
    store.links.upsert(Link(HOLDER, "c-1", f"g-{HOLDER}", graph_change_key="ck-ours",
                            origin=LinkOrigin.BC))

    def note(etag: str) -> GraphNotification:
        return GraphNotification(subscription_id=f"sub-{HOLDER}", user_id=HOLDER,
                                 change_type="updated", resource="x",
                                 contact_id=f"g-{HOLDER}", etag=etag, received_at=NOW)

    produce(settings, GRAPH_NOTIFICATIONS, [(f"sub-{HOLDER}", note('W/"ck-ours"'), "t-echo")])
    assert route(settings, store, inputs=1) == [], "our write's changeKey: nothing to read"
    produce(settings, GRAPH_NOTIFICATIONS, [(f"sub-{HOLDER}", note('W/"ck-new"'), "t-edit")])
    commands = route(settings, store, inputs=1)
    assert [(user, cmd.kind, trace) for user, cmd, trace in commands] == [
        (HOLDER, CommandKind.GRAPH_HINT, "t-edit")]
