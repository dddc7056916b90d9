"""What arrives while the console runs: results on `sync.results` (followed from the real
broker) change the pages; the Health page reads the broker and the store."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from contactsync.console.app import create_console_app
from contactsync.console.results import ResultsFeed
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import SYNC_RESULTS, ensure_topics_at, topic_name
from contactsync.schemas.envelope import encode, wrap
from contactsync.schemas.messages import CommandKind, ResultStatus, SyncResult
from contactsync.settings import Settings
from contactsync.store import Store

pytestmark = pytest.mark.kafka


def _publish(settings: Settings, *results: SyncResult) -> None:
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        for result in results:
            producer.send(topic_name(settings, SYNC_RESULTS), key=result.user_id.encode(),
                          value=encode(wrap(result))).get(timeout=30)
    finally:
        producer.close(timeout=5)


@pytest.fixture
def settings(kafka_settings: Settings, store: Store) -> Settings:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    return kafka_settings.model_copy(update={"database_url": str(store.engine.url)})


@pytest.fixture
def feed(settings: Settings) -> Iterator[ResultsFeed]:
    following = ResultsFeed(settings)
    following.start()
    yield following
    following.stop()


def _until(seen: object, what: str) -> None:
    """Wait (bounded) for the feed to catch up; the wait is not what is asserted."""
    deadline = time.monotonic() + 30
    while not callable(seen) or not seen():
        assert time.monotonic() < deadline, f"the console never saw {what}"
        time.sleep(0.2)


def test_a_failed_apply_and_a_dry_runs_plan_show_up(settings: Settings, store: Store,
                                                     feed: ResultsFeed):
    user = "alice@contoso.com"
    _publish(settings,
             SyncResult(user_id=user, command_id="c1", kind=CommandKind.BC_CHANGE,
                        status=ResultStatus.FAILED, reason="Graph said 409 twice"),
             SyncResult(user_id=user, command_id="c2", kind=CommandKind.FULL_SYNC,
                        status=ResultStatus.OK, dry_run=True, run_id="console-x",
                        summary={"create_outlook": 4, "delete_outlook": 2},
                        skipped={"no_email": 3},
                        plan=["create in Outlook: Jane Doe <j***@contoso.com>"]))
    _until(lambda: feed.dry_runs() and feed.newest(), "both results")
    with TestClient(create_console_app(settings, store, feed.view())) as client:
        users = html.unescape(client.get("/users").text)
        row = re.search(rf'<tr class="[^"]*" data-user="{user}">.*?</tr>', users, re.S)
        assert row and row.group(0).startswith('<tr class="attention"')
        assert "last near-real-time apply failed: Graph said 409 twice" in row.group(0)

        detail = html.unescape(client.get(f"/users/{user}").text)
        assert "Last dry run (plan, nothing written)" in detail
        assert "Would: create_outlook 4, delete_outlook 2." in detail
        assert "Skipped: no_email 3." in detail
        assert "<li>create in Outlook: Jane Doe <j***@contoso.com></li>" in detail
        # A dry run is a plan, not the user's last Full sync: that stays the kept report.
        forced = html.unescape(client.get(f"/users/{user}/confirm",
                                          params={"action": "force_full_sync"}).text)
        assert "This passes the mass-delete safety rail." in forced
        assert "planned:\ncreate_outlook 4, delete_outlook 2." in forced  # before confirming
        assert "console-x" not in re.search(r"Last Full sync</dt><dd>(.*?)</dd>", detail,
                                            re.S).group(1)  # type: ignore[union-attr]


def test_health_reads_the_broker_and_the_store(settings: Settings, store: Store):
    with TestClient(create_console_app(settings, store)) as client:
        page = html.unescape(client.get("/health").text)
    assert re.search(r"<th>Kafka broker</th><td class=\"status ok\">ok</td>", page)
    assert re.search(r"<th>Store</th><td class=\"status ok\">ok</td><td>.*3 user setup", page)
    # alice and bob hold live subscriptions; carol is disabled and needs none
    assert "2 enabled user(s): 2 active, 0 expiring within the hour, 0 expired" in page


def test_health_names_a_broker_that_does_not_answer(store: Store, tmp_path):
    down = Settings(database_url=str(store.engine.url), kafka_bootstrap_servers="127.0.0.1:1")
    with TestClient(create_console_app(down, store)) as client:
        page = html.unescape(client.get("/health").text)
    assert '<tr class="attention"><th>Kafka broker</th>' in page
    assert "Kafka is not reachable at 127.0.0.1:1" in page  # the CLI's sentence
