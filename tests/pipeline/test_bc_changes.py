"""The BC change feed on the real broker against the BC emulator (in-process, real HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaProducer

from contactsync.clients.bc import BcClient, parse_bc_datetime
from contactsync.clients.errors import ServiceUnavailable
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.engine.links import Link
from contactsync.http_server import free_port
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import (
    BC_CONTACT_CHANGES,
    BC_NOTIFICATIONS,
    ensure_topics_at,
    topic_name,
)
from contactsync.producers.bc_changes import BcChangeFeed, contact_id_from_resource
from contactsync.schemas.contacts import BcContact
from contactsync.schemas.envelope import decode, encode, wrap
from contactsync.schemas.messages import BcChangeKind, BcContactChanged, BcNotification
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import Subscription, SubscriptionService
from tests.kafka_fixtures import read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    return kafka_settings


@pytest.fixture
def emulators() -> Iterator[RunningEmulators]:
    running = start_emulators(bc_config=BcEmulatorConfig.for_tests())
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store.open(settings.database_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def bc(loop: asyncio.AbstractEventLoop, emulators: RunningEmulators) -> Iterator[BcClient]:
    client = loop.run_until_complete(BcClient.create(emulators.bc_base_url,
                                                     emulators.bc.company_id))
    try:
        yield client
    finally:
        loop.run_until_complete(client.aclose())


@pytest.fixture
def producer(settings: Settings) -> Iterator[KafkaProducer]:
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        yield producer
    finally:
        producer.close(timeout=5)


def read_changes(settings: Settings) -> list[tuple[str, BcContactChanged]]:
    """Every message on bc.contact.changes so far, as (key, payload)."""
    return [(r.key.decode(), decode(r.value).payload)
            for r in read_topic(settings, BC_CONTACT_CHANGES)]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def contact_queries(emulators: RunningEmulators) -> int:
    """GETs of the contacts collection: the change feed's queries."""
    return sum(r["count"] for r in emulators.bc.counters_snapshot()["by_route"]
               if r["method"] == "GET" and r["route"].endswith("companies({company_id})/contacts"))


def hold_subscription(store: Store, company: str) -> None:
    """What the subscriptions role stores once BC accepted its subscription: a live one."""
    store.subscriptions.upsert(Subscription(
        "bc-sub-1", SubscriptionService.BC, f"/api/v2.0/companies({company})/contacts",
        "secret", datetime.now(UTC) + timedelta(days=3), "http://127.0.0.1:9/webhooks/bc",
        company=company))


def link(store: Store, bc_ids: list[str], user: str = "ann@contoso.test") -> None:
    if store.setups.get(user) is None:
        store.setups.add(UserSetup(user_id=user, mailbox=user))
    store.links.upsert_many(Link(user, bc_id, f"g-{bc_id}") for bc_id in bc_ids)


def hint(company: str, change: str, resource: str) -> BcNotification:
    return BcNotification(subscription_id="sub-1", company_id=company, change_type=change,
                          resource=resource, last_modified=datetime.now(UTC),
                          received_at=datetime.now(UTC))


def produce_hints(settings: Settings, hints: list[BcNotification]) -> None:
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        for note in hints:
            producer.send(topic_name(settings, BC_NOTIFICATIONS), key=note.company_id.encode(),
                          value=encode(wrap(note)))
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


class Running:
    """The feed's `run` loop in a thread (as the role runs it)."""

    def __init__(self, feed: BcChangeFeed) -> None:
        self.feed = feed
        self.stop = threading.Event()
        self.thread = threading.Thread(target=feed.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


def test_contact_id_from_resource() -> None:
    assert contact_id_from_resource("api/v2.0/companies(c-1)/contacts(abc-9)") == "abc-9"
    assert contact_id_from_resource(
        "https://x/v2.0/prod/api/v2.0/companies(c)/contacts({ABC})") == "ABC"
    assert contact_id_from_resource("api/v2.0/companies(c)/contacts?$filter=x") is None


def test_hints_burst_deletion_and_collection_one_query_per_round(
    settings: Settings, store: Store, emulators: RunningEmulators, bc: BcClient,
    loop: asyncio.AbstractEventLoop, producer: KafkaProducer,
) -> None:
    company = bc.company_id
    base = f"api/v2.0/companies({company})/contacts"
    hold_subscription(store, company)
    feed = BcChangeFeed(settings, store, bc, producer, loop=loop, poll_interval=3600,
                        coalesce_seconds=0.5)
    with Running(feed):
        wait_for(lambda: feed.rounds >= 1, "the first (catch-up) round")
        assert feed.webhooks is True and feed.interval == 3600
        assert feed.scans == 0, "BC announces deletions: no id scan"
        assert contact_queries(emulators) == 1

        # A burst: 5 new contacts, 2 of them edited twice more; a hint for every edit.
        made = [emulators.bc.create_contact({"displayName": f"P{i}", "email": f"p{i}@x.test"})
                for i in range(5)]
        hints = [hint(company, "created", f"{base}({c['id']})") for c in made]
        for c in made[:2]:
            for title in ("Buyer", "CFO"):
                emulators.bc.update_contact(c["id"], {"jobTitle": title})
                hints.append(hint(company, "updated", f"{base}({c['id']})"))
        produce_hints(settings, hints)
        changes = wait_for(lambda: len(read_changes(settings)) >= 5 and read_changes(settings),
                           "the snapshots of the burst")
        time.sleep(0.5)  # nothing more may come
        changes = read_changes(settings)
        assert feed.rounds == 2, "11 hints, one round"
        assert contact_queries(emulators) == feed.rounds, "one query per round"
        assert sorted(key for key, _ in changes) == sorted(c["id"] for c in made)
        for key, change in changes:
            assert change.kind is BcChangeKind.UPSERT and change.contact_id == key
            assert change.company_id == company
            assert change.snapshot is not None
            now = emulators.bc.contact(key)  # the full, latest state, as BC returns it
            assert change.snapshot == BcContact.model_validate(now)
            assert change.snapshot.etag == now["@odata.etag"]
        assert {c.snapshot.job_title for _, c in changes if c.snapshot} == {"", "CFO"}
        newest = max(parse_bc_datetime(emulators.bc.contact(c["id"])["lastModifiedDateTime"])
                     for c in made)
        assert store.state.get_watermark(company) == newest

        # A deletion: BC has nothing left to read; the id comes from the hint's resource.
        emulators.bc.delete_contact(made[4]["id"])
        produce_hints(settings, [hint(company, "deleted", f"{base}({made[4]['id']})")])
        wait_for(lambda: len(read_changes(settings)) >= 6, "the deletion")
        deletions = [(k, c) for k, c in read_changes(settings) if c.kind is BcChangeKind.DELETED]
        assert [k for k, _ in deletions] == [made[4]["id"]]
        assert deletions[0][1].snapshot is None and deletions[0][1].contact_id == made[4]["id"]
        assert contact_queries(emulators) == feed.rounds

        # A collection notification (many records changed) is resolved by the same query.
        for c in made[:3]:
            emulators.bc.update_contact(c["id"], {"city": "Seattle"})
        since = datetime.now(UTC) - timedelta(seconds=5)
        produce_hints(settings, [hint(
            company, "collection",
            f"{base}?$filter=lastModifiedDateTime%20gt%20{since.isoformat()}")])
        wait_for(lambda: len(read_changes(settings)) >= 9, "the collection's snapshots")
        time.sleep(0.5)
        all_changes = read_changes(settings)
        assert len(all_changes) == 9
        tail = [(k, c) for k, c in all_changes if c.snapshot is not None and c.snapshot.city]
        assert sorted(k for k, _ in tail) == sorted(c["id"] for c in made[:3])
        assert all(c.snapshot is not None and c.snapshot.city == "Seattle" for _, c in tail)
        assert contact_queries(emulators) == feed.rounds


def test_watermark_starts_at_now_and_waits_for_the_broker(
    settings: Settings, store: Store, emulators: RunningEmulators, bc: BcClient,
    loop: asyncio.AbstractEventLoop, producer: KafkaProducer,
) -> None:
    company = bc.company_id
    emulators.bc.create_contact({"displayName": "Old", "email": "old@x.test"})  # history
    time.sleep(0.5)  # older than twice the overlap: the first query must not reach it
    dead = make_producer(f"127.0.0.1:{free_port()}", api_version=(2, 5, 0), max_block_ms=300,
                         request_timeout_ms=300, delivery_timeout_ms=1000,
                         reconnect_backoff_max_ms=100)
    try:
        overlap = timedelta(milliseconds=200)
        feed = BcChangeFeed(settings, store, bc, dead, loop=loop, overlap=overlap)
        before = datetime.now(UTC)
        feed.start()
        start = store.state.get_watermark(company)
        assert start is not None
        assert before - overlap <= start <= datetime.now(UTC) - overlap, "now minus the overlap"
        made = emulators.bc.create_contact({"displayName": "New", "email": "new@x.test"})
        feed.add_hint(hint(company, "updated", f"api/v2.0/companies({company})/contacts(x)"))
        feed.add_hint(hint(company, "deleted", f"api/v2.0/companies({company})/contacts(gone)"))
        with pytest.raises(ServiceUnavailable):
            feed.run_round()
        assert store.state.get_watermark(company) == start, "not advanced without the acks"
        assert feed.rounds == 0 and feed.failed_rounds == 1

        feed.producer = producer  # the broker is back
        report = feed.run_round()
    finally:
        dead.close(timeout=1)
    assert (report.upserts, report.deletes) == (1, 1), "the deletion waited for this round"
    modified = parse_bc_datetime(emulators.bc.contact(made["id"])["lastModifiedDateTime"])
    assert store.state.get_watermark(company) == modified == report.watermark_after
    assert sorted((k, c.kind) for k, c in read_changes(settings)) == sorted(
        [(made["id"], BcChangeKind.UPSERT), ("gone", BcChangeKind.DELETED)])

    again = feed.run_round()  # the overlap re-reads "New": same ETag, not published again
    assert (again.upserts, again.unchanged) == (0, 1)
    assert len(read_changes(settings)) == 2


@pytest.mark.parametrize("why", ["contacts not offered", "subscription refused"])
def test_polling_finds_changes_without_webhooks(
    settings: Settings, store: Store, emulators: RunningEmulators, bc: BcClient,
    loop: asyncio.AbstractEventLoop, producer: KafkaProducer, why: str,
) -> None:
    """No live BC subscription: contacts are not in webhookSupportedResources, or they are
    but BC refused the subscription POST (so the subscriptions role stored none)."""
    emulators.bc.set_webhooks_supported(why == "subscription refused")
    feed = BcChangeFeed(settings, store, bc, producer, loop=loop, poll_interval=3600,
                        fallback_poll_interval=0.3, deletion_scan_interval=3600)
    with Running(feed):
        wait_for(lambda: feed.rounds >= 1, "the first round")
        assert feed.webhooks is (why == "subscription refused") and feed.interval == 0.3
        made = emulators.bc.create_contact({"displayName": "Polled", "email": "poll@x.test"})
        changes = wait_for(lambda: read_changes(settings), "the polled change")
    assert [(k, c.kind) for k, c in changes] == [(made["id"], BcChangeKind.UPSERT)]
    assert feed.rounds >= 2
    assert feed.scans == 1, "one id scan at start, the next one an interval later"
    assert contact_queries(emulators) == feed.rounds, "nothing linked: the scan asks BC nothing"


@pytest.mark.parametrize("webhooks", [True, False], ids=["bc-webhooks", "bc-polling"])
def test_a_bc_deletion_reaches_the_topic_either_way(
    settings: Settings, store: Store, emulators: RunningEmulators, bc: BcClient,
    loop: asyncio.AbstractEventLoop, producer: KafkaProducer, webhooks: bool,
) -> None:
    """With a live subscription BC's `deleted` notification names the contact; without one
    the id scan finds it (issue 12, defect 10): no waiting for the nightly reconcile."""
    company = bc.company_id
    emulators.bc.set_webhooks_supported(webhooks)
    if webhooks:
        hold_subscription(store, company)
    people = [emulators.bc.create_contact({"displayName": f"P{i}", "email": f"p{i}@x.test",
                                           "type": "Person"}) for i in range(4)]
    link(store, [p["id"] for p in people])
    feed = BcChangeFeed(settings, store, bc, producer, loop=loop, poll_interval=3600,
                        fallback_poll_interval=0.3, deletion_scan_interval=0.3)
    with Running(feed):
        wait_for(lambda: feed.rounds >= 1, "the first round")
        emulators.bc.delete_contact(people[0]["id"])
        # No longer a person: not a deletion (the round's snapshot tells the router).
        emulators.bc.update_contact(people[1]["id"], {"type": "Company"})
        if webhooks:
            produce_hints(settings, [hint(company, "deleted",
                                          f"api/v2.0/companies({company})/contacts"
                                          f"({people[0]['id']})")])
        wait_for(lambda: any(c.kind is BcChangeKind.DELETED
                             for _, c in read_changes(settings)), "the deletion")
        if not webhooks:
            scans = feed.scans
            wait_for(lambda: feed.scans >= scans + 2, "two more scans")
    deleted = [k for k, c in read_changes(settings) if c.kind is BcChangeKind.DELETED]
    assert deleted == [people[0]["id"]], "published once, only the deleted one"
    assert (feed.scans == 0) is webhooks


def test_a_doubtful_listing_deletes_nothing(
    settings: Settings, store: Store, emulators: RunningEmulators, bc: BcClient,
    loop: asyncio.AbstractEventLoop, producer: KafkaProducer,
) -> None:
    """More linked contacts missing than the mass-delete rail allows: left to the reconcile."""
    emulators.bc.set_webhooks_supported(False)
    people = [emulators.bc.create_contact({"displayName": f"P{i}", "email": f"p{i}@x.test",
                                           "type": "Person"}) for i in range(30)]
    link(store, [p["id"] for p in people])
    for p in people[:25]:
        emulators.bc.delete_contact(p["id"])
    feed = BcChangeFeed(settings, store, bc, producer, loop=loop)
    assert feed.scan_deletions() == []
    emulators.bc.create_contact({"displayName": "Back", "email": "b@x.test", "type": "Person"})
    link(store, [f"{i:08d}-0000-0000-0000-000000000000" for i in range(300)], "bob@x.test")
    assert feed.scan_deletions() == [], "25 + 300 of 330 linked missing: still too many"
