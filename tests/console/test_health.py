"""The Health page's credentials and consumer lag per role, and the Users page's freshness:
read from what /readyz and /metrics read in this process (the readiness registry, the
credential state, the metrics registry), as the roles of `contactsync run` write them."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from contactsync import metrics
from contactsync.clients.errors import CredentialRejected
from contactsync.credential_health import HEALTH
from contactsync.health import READINESS, store_check


@pytest.fixture(autouse=True)
def nothing_reported() -> Iterator[None]:
    """Each test starts, and leaves, a process where no role reported yet."""

    def forget() -> None:
        HEALTH.reset()
        READINESS.clear()
        for series in (metrics.CONSUMER_LAG, metrics.COMPONENT_READY, metrics.OLDEST_UNAPPLIED):
            series.clear()

    forget()
    yield
    forget()


def _row(page: str, name: str) -> str:
    found = re.search(rf"<tr[^>]*><th>{re.escape(name)}</th>.*?</tr>", page, re.S)
    assert found, f"no {name} row on the Health page"
    return found.group(0)


def test_without_roles_in_the_process_credentials_and_lag_say_where_to_look(
        client: TestClient):
    page = html.unescape(client.get("/health").text)
    credentials = _row(page, "Credentials")
    assert '<td class="status unknown">n/a</td>' in credentials  # not "ok": nobody knows here
    assert "contactsync run --console-port P" in credentials
    # Lag is read from the broker's offsets instead; without a broker that says so.
    lag = _row(page, "Consumer lag")
    assert '<td class="status unknown">n/a</td>' in lag
    assert "not known: no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS" in lag


def test_a_refused_credential_and_a_stuck_role_stand_out(client: TestClient, store):
    READINESS.add_check("store", store_check(store))  # a role watches, as in `run`
    graph_refused = CredentialRejected("Graph refused the client secret", service="graph")
    HEALTH.failed("graph", graph_refused)
    HEALTH.succeeded("graph")  # fixed: the readiness component is back at 1
    HEALTH.failed("bc", CredentialRejected(
        "Entra ID refused the client secret: set AZURE_CLIENT_SECRET to a current one",
        service="bc"))
    # The applier's worker measured its lag and holds a change observed 20 minutes ago;
    # the router is caught up.
    metrics.CONSUMER_LAG.labels("contactsync-applier", "sync.commands", "0").set(3)
    metrics.CONSUMER_LAG.labels("contactsync-applier", "sync.commands", "1").set(4)
    metrics.OLDEST_UNAPPLIED.set_oldest("contactsync-applier", time.time() - 1200)
    metrics.CONSUMER_LAG.labels("contactsync-router", "graph.notifications", "0").set(0)
    metrics.OLDEST_UNAPPLIED.set_oldest("contactsync-router", None)

    page = html.unescape(client.get("/health").text)
    credentials = _row(page, "Credentials")
    assert credentials.startswith('<tr class="attention">')
    assert "bc: Entra ID refused the client secret: set AZURE_CLIENT_SECRET" in credentials
    assert "graph:" not in credentials
    applier = _row(page, "Consumer lag: applier")
    assert applier.startswith('<tr class="attention">')
    assert re.search(r"7 record\(s\) not yet consumed; oldest change not finished 1\d{3} s ago",
                     applier)
    router = _row(page, "Consumer lag: router")
    assert router.startswith('<tr class="">')
    assert "0 record(s) not yet consumed; caught up" in router


def test_credentials_in_use_are_named(client: TestClient, store):
    READINESS.add_check("store", store_check(store))
    HEALTH.failed("graph", CredentialRejected("refused", service="graph"))
    HEALTH.succeeded("graph")
    page = html.unescape(client.get("/health").text)
    row = _row(page, "Credentials")
    assert row.startswith('<tr class="">') and "tokens issued for graph" in row


def _users_row(page: str, user: str) -> str:
    found = re.search(rf'<tr class="[^"]*" data-user="{re.escape(user)}">.*?</tr>', page, re.S)
    assert found, f"no row for {user}"
    return found.group(0)


def test_users_page_shows_folder_skips_and_freshness_unknown_outside_run(client: TestClient):
    page = html.unescape(client.get("/users").text)
    alice = _users_row(page, "alice@contoso.com")
    assert 'class="num in-folder" title="linked contacts: the sync\'s contacts in the ' \
           'folder">2<' in alice
    assert '<td class="skipped">no_email 4, not_a_person 1</td>' in alice  # its last report
    assert '<td class="freshness">n/a</td>' in alice
    assert '<td class="skipped">none</td>' in _users_row(page, "bob@contoso.com")


def _command(user: str) -> bytes:
    from contactsync.schemas.envelope import encode, wrap
    from contactsync.schemas.messages import CommandKind, SyncCommand

    return encode(wrap(SyncCommand(user_id=user, kind=CommandKind.SYNC, reason="test")))


@pytest.mark.kafka
def test_freshness_is_per_user_and_lag_per_role_from_the_brokers_offsets(
        store, kafka_settings):
    """No role runs in this process (a standalone console): the broker's committed offsets
    say what each role has not finished, and the commands keyed by user say for whom."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from contactsync.console.app import create_console_app
    from contactsync.kafka.io import make_producer
    from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at, topic_name

    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    topic = topic_name(kafka_settings, SYNC_COMMANDS)
    producer = make_producer(kafka_settings.kafka_bootstrap_servers)
    now_ms = int(time.time() * 1000)
    try:  # bob's command (a minute old) is applied; alice's (five minutes old) waits
        bob = producer.send(topic, _command("bob@contoso.com"), key=b"bob@contoso.com",
                            timestamp_ms=now_ms - 60_000).get(timeout=30)
        producer.send(topic, _command("alice@contoso.com"), key=b"alice@contoso.com",
                      timestamp_ms=now_ms - 300_000).get(timeout=30)
    finally:
        producer.close(timeout=5)
    applier = KafkaConsumer(bootstrap_servers=kafka_settings.kafka_bootstrap_servers,
                            group_id=f"{kafka_settings.topic_prefix}contactsync-applier",
                            enable_auto_commit=False)
    try:  # as the applier commits once it finished bob's command
        applier.commit({TopicPartition(topic, bob.partition):
                        OffsetAndMetadata(bob.offset + 1, "", -1)})
    finally:
        applier.close(autocommit=False)

    settings = kafka_settings.model_copy(update={"database_url": str(store.engine.url)})
    with TestClient(create_console_app(settings, store)) as client:
        users = html.unescape(client.get("/users").text)
        assert '<td class="freshness">5 min</td>' in _users_row(users, "alice@contoso.com")
        for caught_up in ("bob@contoso.com", "carol@contoso.com"):
            assert '<td class="freshness">caught up</td>' in _users_row(users, caught_up)
        page = html.unescape(client.get("/health").text)
    row = _row(page, "Consumer lag: applier")
    assert row.startswith('<tr class="">')  # five minutes: under the alert's fifteen
    assert re.search(r"1 record\(s\) not yet consumed; oldest change not finished 3\d\d s "
                     r"ago \(committed offsets\)", row), row
