"""The subscription keeper against the Graph and BC emulators, with our own webhook answering
their handshakes and notifications, on the real broker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from contactsync.clients.bc import BcClient, parse_bc_datetime
from contactsync.clients.graph import GraphClient
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.http_server import BackgroundServer
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import (
    BC_NOTIFICATIONS,
    GRAPH_LIFECYCLE,
    GRAPH_NOTIFICATIONS,
    SYNC_COMMANDS,
    ensure_topics_at,
    group_name,
    topic_name,
)
from contactsync.kafka.worker import RetryPolicy
from contactsync.producers.bc_changes import BcChangeFeed
from contactsync.producers.legacy_lifecycle import drain_old_lifecycle
from contactsync.producers.subscriptions import (
    CREATED_REASON,
    GROUP_ID,
    RECREATED_REASON,
    SubscriptionKeeper,
)
from contactsync.producers.webhook import StoreRegistry, create_webhook_app
from contactsync.schemas.envelope import Envelope, decode, encode, wrap
from contactsync.schemas.messages import (
    CommandKind,
    GraphLifecycle,
    GraphNotification,
    LifecycleEvent,
    SyncCommand,
)
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import Subscription, SubscriptionService
from tests.kafka_fixtures import read_topic

pytestmark = pytest.mark.kafka

ANN, BOB, OFF = "ann@contoso.test", "bob@contoso.test", "off@contoso.test"
FAST = RetryPolicy(max_attempts=1000, base_delay=0.01, max_delay=0.05, timeout=2.0)


@dataclass
class Rig:
    settings: Settings
    store: Store
    emulators: RunningEmulators
    keeper: SubscriptionKeeper
    loop: asyncio.AbstractEventLoop
    now: list[datetime]
    webhook: BackgroundServer

    def run_once(self) -> Any:
        return self.loop.run_until_complete(self.keeper.run_once())

    def stored(self, user: str) -> list[Subscription]:
        return self.store.subscriptions.list_all(service=SubscriptionService.GRAPH, user_id=user)

    def graph_subs(self, mailbox: str) -> list[dict[str, Any]]:
        uid = self.emulators.graph.user_id(mailbox)
        return [s for s in self.emulators.graph.subscriptions() if s["userId"] == uid]


def read_all(settings: Settings, base: str) -> list[tuple[str, Envelope[Any]]]:
    return [(r.key.decode(), decode(r.value)) for r in read_topic(settings, base)]


def commands(settings: Settings) -> list[tuple[str, SyncCommand]]:
    return [(k, e.payload) for k, e in read_all(settings, SYNC_COMMANDS)]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextmanager
def rigged(kafka_settings: Settings, *, webhook_up: bool = True,
           **keeper_options: Any) -> Iterator[Rig]:
    """Ann and Bob enabled, Off disabled, the company in BC; our webhook (started unless
    `webhook_up` is False: `rig.webhook.start()` later) answers the emulators' handshakes."""
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    store = Store.open(kafka_settings.database_url)
    # A large Graph maximum lets the tests renew from an injected "now" hours ahead.
    emulators = start_emulators(
        graph_config=GraphEmulatorConfig.fast(subscription_max_minutes=100_000),
        bc_config=BcEmulatorConfig.for_tests())
    webhook = BackgroundServer(create_webhook_app(kafka_settings, StoreRegistry(store)))
    if webhook_up:
        webhook.start()
    settings = kafka_settings.model_copy(update={"webhook_public_url": webhook.url})
    for mailbox, enabled in ((ANN, True), (BOB, True), (OFF, False)):
        emulators.graph.add_user(mailbox)
        store.setups.add(UserSetup(user_id=mailbox, mailbox=mailbox, enabled=enabled))
    loop = asyncio.new_event_loop()
    graph = GraphClient.create(emulators.graph_base_url)
    bc = loop.run_until_complete(BcClient.create(emulators.bc_base_url, emulators.bc.company_id))
    producer: KafkaProducer = make_producer(settings.kafka_bootstrap_servers)
    now = [datetime.now(UTC)]
    keeper = SubscriptionKeeper(settings, store, graph, bc, producer, loop=loop,
                                clock=lambda: now[0], **keeper_options)
    try:
        yield Rig(settings, store, emulators, keeper, loop, now, webhook)
    finally:
        producer.close(timeout=5)
        loop.run_until_complete(bc.aclose())
        loop.run_until_complete(graph.close())
        loop.close()
        webhook.stop()
        emulators.stop()
        store.close()


@pytest.fixture
def rig(kafka_settings: Settings) -> Iterator[Rig]:
    with rigged(kafka_settings) as made:
        yield made


def test_one_subscription_per_enabled_user_and_one_for_the_company(rig: Rig) -> None:
    report = rig.run_once()
    assert len(report.created) == 3 and not report.failed
    base = rig.settings.webhook_public_url
    for mailbox in (ANN, BOB):
        [stored] = rig.stored(mailbox)
        [live] = rig.graph_subs(mailbox)
        assert live["id"] == stored.subscription_id
        assert live["clientState"] == stored.client_state and len(stored.client_state) >= 43
        assert live["resource"] == stored.resource
        assert stored.resource.startswith(f"users/{mailbox}/contactFolders/")
        assert stored.resource.endswith("/contacts")
        assert live["changeType"] == "created,updated,deleted"
        assert live["notificationUrl"] == f"{base}/webhooks/graph"
        assert live["lifecycleNotificationUrl"] == f"{base}/webhooks/graph/lifecycle"
        left = stored.expiration - rig.now[0]
        assert timedelta(minutes=4190) < left <= timedelta(minutes=4200)
    assert rig.stored(OFF) == [] and rig.graph_subs(OFF) == []
    states = {s.client_state for s in rig.store.subscriptions.list_all()}
    assert len(states) == 3, "a fresh secret each"

    [bc_sub] = rig.emulators.bc.hub.all()
    [bc_stored] = rig.store.subscriptions.list_all(service=SubscriptionService.BC)
    assert bc_stored.subscription_id == bc_sub.subscription_id
    assert bc_stored.company == rig.emulators.bc.company_id
    assert bc_sub.client_state == bc_stored.client_state
    assert bc_sub.notification_url == f"{base}/webhooks/bc"

    # A second pass has nothing to do.
    again = rig.run_once()
    assert (again.created, again.recreated, again.renewed, again.deleted) == ([], [], [], [])
    assert len(rig.emulators.graph.subscriptions()) == 2 and len(rig.emulators.bc.hub.all()) == 1

    # Each user's first subscription starts with a sync (notifications before it was stored).
    assert sorted((k, c.kind, c.reason) for k, c in commands(rig.settings)) == [
        (ANN, CommandKind.SYNC, CREATED_REASON), (BOB, CommandKind.SYNC, CREATED_REASON)]

    # The stored client states are what the webhook checks: real notifications get through.
    folder_id = rig.stored(ANN)[0].resource.split("/")[3]
    rig.emulators.graph.person_create_contact(ANN, folder_id, {"givenName": "Z"})
    rig.emulators.bc.create_contact({"displayName": "Y", "email": "y@x.test"})
    rig.emulators.bc.flush_notifications()
    graph_notes = wait_for(lambda: read_all(rig.settings, GRAPH_NOTIFICATIONS), "graph note")
    assert graph_notes[0][1].payload.user_id == ANN
    assert read_all(rig.settings, GRAPH_LIFECYCLE) == [], "the keeper's topic: no changes"
    bc_notes = wait_for(lambda: read_all(rig.settings, BC_NOTIFICATIONS), "bc note")
    assert bc_notes[0][1].payload.company_id == rig.emulators.bc.company_id


def test_renews_when_a_third_of_the_lifetime_is_left(rig: Rig) -> None:
    rig.run_once()
    before = {s.subscription_id: s.expiration for s in rig.store.subscriptions.list_all()}
    rig.now[0] += timedelta(minutes=2700)  # 1,500 of 4,200 minutes left: not yet
    assert rig.run_once().renewed == []
    rig.emulators.bc.reset_counters()

    rig.now[0] += timedelta(minutes=200)  # 1,300 left (< 1,400); BC: under 1 of its 3 days
    report = rig.run_once()
    assert sorted(report.renewed) == sorted(before)
    assert report.created == report.recreated == report.deleted == []
    for mailbox in (ANN, BOB):
        [stored] = rig.stored(mailbox)
        assert stored.expiration - rig.now[0] > timedelta(minutes=4190)
        [live] = rig.graph_subs(mailbox)
        assert parse_bc_datetime(live["expirationDateTime"]) == stored.expiration
    patches = [r for r in rig.emulators.bc.counters_snapshot()["by_route"]
               if r["method"] == "PATCH" and "subscriptions" in r["route"]]
    assert sum(r["count"] for r in patches) == 1, "BC renewed once (with If-Match)"
    # The renewal carried the documented body (the emulator refuses `{}`, issue 12 defect 8).
    [bc_stored] = rig.store.subscriptions.list_all(service=SubscriptionService.BC)
    [bc_live] = rig.emulators.bc.hub.all()
    assert bc_stored.subscription_id in report.renewed and not report.failed
    assert bc_live.client_state == bc_stored.client_state
    assert bc_live.notification_url == bc_stored.notification_url


def test_recreates_a_removed_subscription_and_queues_a_sync(rig: Rig) -> None:
    rig.run_once()
    [first] = rig.stored(ANN)
    bob_before = rig.stored(BOB)

    # Removed behind our back, without a word: the next pass sees it missing.
    assert rig.emulators.graph.remove_subscription(first.subscription_id)
    report = rig.run_once()
    [second] = rig.stored(ANN)
    assert report.recreated == [second.subscription_id] != [first.subscription_id]
    assert [s["id"] for s in rig.graph_subs(ANN)] == [second.subscription_id]
    assert second.client_state != first.client_state
    assert rig.stored(BOB) == bob_before

    # Removed with a lifecycle event: webhook -> graph.lifecycle -> the keeper's worker.
    worker = rig.keeper.build_worker(retry=FAST)
    try:
        rig.emulators.graph.send_lifecycle(second.subscription_id, "subscriptionRemoved")
        deadline = time.monotonic() + 20
        while [s.subscription_id for s in rig.stored(ANN)] == [second.subscription_id]:
            assert time.monotonic() < deadline, "the lifecycle event was not acted on"
            worker.run_once()
        [third] = rig.stored(ANN)
        assert [s["id"] for s in rig.graph_subs(ANN)] == [third.subscription_id]

        # reauthorizationRequired renews (and so reauthorizes) the subscription.
        rig.now[0] += timedelta(minutes=30)
        rig.emulators.graph.send_lifecycle(third.subscription_id, "reauthorizationRequired")
        while rig.stored(ANN)[0].expiration == third.expiration:
            assert time.monotonic() < deadline, "the reauthorization was not acted on"
            worker.run_once()
        assert rig.stored(ANN)[0].subscription_id == third.subscription_id
    finally:
        worker.close()

    recreated = [(k, c.kind) for k, c in commands(rig.settings) if c.reason == RECREATED_REASON]
    assert recreated == [(ANN, CommandKind.SYNC), (ANN, CommandKind.SYNC)], "keyed by user"


def _commit_end(settings: Settings, group: str, base: str) -> None:
    """The group has read the topic to its end (what an older keeper left behind)."""
    topic = topic_name(settings, base)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                             group_id=group_name(settings, group), enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(end, "", -1)
                         for tp, end in consumer.end_offsets(tps).items()})
    finally:
        consumer.close(autocommit=False)


def test_lifecycle_events_left_on_graph_notifications_at_the_upgrade_are_acted_on_once(
    rig: Rig,
) -> None:
    rig.run_once()
    [first] = rig.stored(ANN)
    # The older keeper read graph.notifications this far; then the older webhook put a change
    # notification and a lifecycle event there, and the upgrade happened.
    _commit_end(rig.settings, GROUP_ID, GRAPH_NOTIFICATIONS)
    sid, now = first.subscription_id, datetime.now(UTC)
    old_topic = topic_name(rig.settings, GRAPH_NOTIFICATIONS)
    for payload in (
        GraphNotification(subscription_id=sid, user_id=ANN, change_type="updated",
                          resource="r", contact_id="c-1", etag='W/"x"', received_at=now),
        GraphLifecycle(subscription_id=sid, user_id=ANN,
                       event=LifecycleEvent.SUBSCRIPTION_REMOVED, received_at=now),
    ):
        rig.keeper.producer.send(old_topic, key=sid.encode(), value=encode(wrap(payload)))
    rig.keeper.producer.flush()
    # A group that never read the old topic (a new deployment) has nothing to drain.
    assert drain_old_lifecycle(rig.settings, "contactsync-new", lambda e: None) == 0

    # The upgraded keeper starts: it drains the old topic before reading graph.lifecycle.
    stop = threading.Event()
    runner = threading.Thread(target=rig.keeper.run, args=(stop, rig.keeper.build_worker()))
    runner.start()
    try:
        # Acted on: a new subscription stored, and once the keeper's first pass has run, Graph
        # holds that one only (the emulator, unlike Graph, still had the "removed" one).
        # One stored subscription, not the first: while it is replaced the store holds both
        # for a moment, and so does Graph (a state that once passed for the end).
        def settled() -> bool:
            stored = [s.subscription_id for s in rig.stored(ANN)]
            return (len(stored) == 1 and stored != [sid]
                    and [s["id"] for s in rig.graph_subs(ANN)] == stored)

        wait_for(settled, "the drained lifecycle event acted on", timeout=30)
    finally:
        stop.set()
        runner.join(timeout=30)
    [second] = rig.stored(ANN)
    assert [s["id"] for s in rig.graph_subs(ANN)] == [second.subscription_id]
    # Drained once: the next start reads nothing there again.
    acted: list[GraphLifecycle] = []
    assert drain_old_lifecycle(rig.settings, GROUP_ID, acted.append) == 0 and acted == []


def test_a_disabled_user_loses_the_subscription(rig: Rig) -> None:
    rig.run_once()
    [bob] = rig.stored(BOB)
    rig.store.setups.disable(BOB)
    report = rig.run_once()
    assert report.deleted == [bob.subscription_id]
    assert rig.stored(BOB) == [] and rig.graph_subs(BOB) == []
    assert len(rig.stored(ANN)) == 1 and len(rig.graph_subs(ANN)) == 1

    [ann] = rig.stored(ANN)
    rig.store.setups.remove(ANN)  # removed altogether: the same
    assert rig.run_once().deleted == [ann.subscription_id]
    assert rig.emulators.graph.subscriptions() == []
    assert rig.store.subscriptions.list_all(service=SubscriptionService.GRAPH) == []


async def test_an_http_public_url_is_refused_once_against_a_real_graph() -> None:
    """Issue 12, defect 11: Graph only notifies https; against a real (non-loopback) Graph the
    keeper refuses at start with one sentence instead of failing every pass for every user."""
    from azure.identity.aio import ClientSecretCredential

    from contactsync.sync.services import ConfigError

    UNUSED: Any = None  # the store and the producer: the check comes before either is used
    settings = Settings(webhook_public_url="http://hooks.contoso.test")
    credential = ClientSecretCredential("tenant", "client", "secret")
    async with credential, GraphClient.create(
        "https://graph.microsoft.com/v1.0", credential
    ) as graph:
        with pytest.raises(ConfigError, match="CONTACTSYNC_WEBHOOK_PUBLIC_URL to an https URL"):
            SubscriptionKeeper(settings, UNUSED, graph, None, UNUSED)
        https = settings.model_copy(update={"webhook_public_url": "https://hooks.contoso.test"})
        SubscriptionKeeper(https, UNUSED, graph, None, UNUSED).close()
    async with GraphClient.create("http://127.0.0.1:9/v1.0") as emulator:  # loopback: allowed
        SubscriptionKeeper(settings, UNUSED, emulator, None, UNUSED).close()


@pytest.mark.parametrize("bc_side", ["live", "contacts not offered", "subscription refused"])
def test_the_bc_change_feed_polls_fast_without_a_live_bc_subscription(
    rig: Rig, bc_side: str
) -> None:
    """The keeper stores a BC subscription only when BC took it; the change feed reads that
    (issue 12, defect 10): no subscription, whatever the reason, means fast polling."""
    if bc_side == "contacts not offered":
        rig.emulators.bc.set_webhooks_supported(False)
    elif bc_side == "subscription refused":
        rig.emulators.bc.config.max_subscriptions = 0  # BC answers 400 to the POST
    report = rig.run_once()
    stored = rig.store.subscriptions.list_all(service=SubscriptionService.BC)
    assert bool(stored) is (bc_side == "live")
    assert (rig.emulators.bc.company_id in report.failed) is (bc_side == "subscription refused")
    bc = rig.keeper.bc
    assert bc is not None
    feed = BcChangeFeed(rig.settings, rig.store, bc, rig.keeper.producer, loop=rig.loop,
                        poll_interval=30, fallback_poll_interval=5)
    feed.start()
    assert feed.interval == (30 if bc_side == "live" else 5)


def test_a_webhook_that_starts_after_the_keeper_is_subscribed_without_waiting_an_interval(
    kafka_settings: Settings,
) -> None:
    """At a deployment the keeper may make its first pass before the webhook answers Graph's
    handshake: that pass fails, and the next comes soon after (not `interval` later), so
    Outlook changes are noticed within a minute of the webhook coming up."""
    # The interval stays 5 minutes: only a quick retry of the failed pass can pass this test.
    with rigged(kafka_settings, webhook_up=False, failed_pass_retry=0.5) as rig:
        stop = threading.Event()
        runner = threading.Thread(target=rig.keeper.run, args=(stop, rig.keeper.build_worker()))
        runner.start()
        try:
            wait_for(lambda: _subscription_attempts(rig.emulators),
                     "a first pass that meets no webhook")
            assert rig.store.subscriptions.list_all(service=SubscriptionService.GRAPH) == []
            rig.webhook.start()
            wait_for(lambda: rig.stored(ANN) and rig.stored(BOB),
                     "the subscriptions made once the webhook answers", timeout=20)
            assert {s["userId"] for s in rig.emulators.graph.subscriptions()} == {
                rig.emulators.graph.user_id(ANN), rig.emulators.graph.user_id(BOB)}
        finally:
            stop.set()
            runner.join(timeout=30)


def _subscription_attempts(emulators: RunningEmulators) -> int:
    return sum(int(row["count"]) for row in emulators.graph.counters_snapshot()["by_route"]
               if row["method"] == "POST" and "subscriptions" in str(row.get("route", row)))
