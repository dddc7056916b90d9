"""The Dead letters page over the real broker: listed by reason, replayed once each."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient

from contactsync.console.app import create_console_app
from contactsync.kafka.deadletter import DeadLetterSink
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import DEADLETTER, SYNC_COMMANDS, ensure_topics_at, topic_name
from contactsync.settings import Settings
from contactsync.store import Store
from tests.kafka_fixtures import read_topic
from tests.pipeline.test_dlq_cli import Failed  # a source record, as the worker sees it

pytestmark = pytest.mark.kafka

FIRST_FAILURE = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)


@pytest.fixture
def console(kafka_settings: Settings, store: Store) -> Iterator[TestClient]:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    source = topic_name(kafka_settings, SYNC_COMMANDS)
    producer = make_producer(kafka_settings.kafka_bootstrap_servers)
    try:
        sink = DeadLetterSink(producer, topic_name(kafka_settings, DEADLETTER))
        for offset, key, reason in ((10, b"alice@contoso.com", "not a message"),
                                    (11, b"bob@contoso.com", "not a message"),
                                    (12, b"carol@contoso.com", "unknown user")):
            sink.send(Failed(source, 0, offset, key, b'{"broken": ' + key, []),
                      reason=reason, error_type="MalformedMessage", attempts=3,
                      first_failed_at=FIRST_FAILURE)
    finally:
        producer.close(timeout=5)
    with TestClient(create_console_app(kafka_settings, store)) as client:
        yield client


def _letters(page: str) -> dict[str, str]:
    """Each dead letter's row by its PARTITION:OFFSET."""
    return dict(re.findall(r'<tr data-where="([^"]+)">(.*?)</tr>', page, re.S))


def test_dead_letters_listed_by_reason_and_replayed_once(console: TestClient, store: Store,
                                                          kafka_settings: Settings):
    page = console.get("/deadletters")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "not a message <small>(2)</small>" in text and "unknown user <small>(1)</small>" in text
    rows = _letters(text)
    assert len(rows) == 3
    carol = next(where for where, row in rows.items() if "carol@contoso.com" in row)
    assert '{"broken": carol@contoso.com' in rows[carol]
    # First and last failure: when it first failed, and when the worker gave up (now).
    assert "2026-03-01T08:30:00" in rows[carol]
    assert datetime.now(UTC).isoformat()[:10] in rows[carol]
    assert 'class="replayed">no<' in rows[carol]

    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    one = console.post("/deadletters/replay",
                       data={"csrf": csrf, "where": carol, "confirmed": "yes"})
    assert "1 replayed, 0 already replayed, 0 unreadable" in one.text
    assert 'class="replayed">yes<' in _letters(html.unescape(one.text))[carol]

    rest = console.post("/deadletters/replay",
                        data={"csrf": csrf, "reason": "not a message", "confirmed": "yes"})
    assert "2 replayed, 0 already replayed, 0 unreadable" in rest.text
    again = console.post("/deadletters/replay",
                         data={"csrf": csrf, "reason": "not a message", "confirmed": "yes"})
    assert "0 replayed, 2 already replayed" in again.text

    replayed = read_topic(kafka_settings, SYNC_COMMANDS)
    assert sorted(r.value for r in replayed) == [
        b'{"broken": alice@contoso.com', b'{"broken": bob@contoso.com',
        b'{"broken": carol@contoso.com']
    audit = store.audit.list_records(user_id="carol@contoso.com", kind="console_action")
    assert audit[0].details["action"] == "replay_dead_letter"
    assert audit[0].details["dead_letter"] == carol


def test_replay_needs_confirmation_and_the_token(console: TestClient,
                                                 kafka_settings: Settings):
    page = console.get("/deadletters")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    unconfirmed = console.post("/deadletters/replay",
                               data={"csrf": csrf, "reason": "unknown user"})
    assert "Nothing replayed: the replay was not confirmed." in unconfirmed.text
    forged = console.post("/deadletters/replay",
                          data={"reason": "unknown user", "confirmed": "yes"})
    assert forged.status_code == 403
    assert read_topic(kafka_settings, SYNC_COMMANDS) == []


def test_a_broker_that_cannot_be_reached_is_one_sentence(client: TestClient):
    page = client.get("/deadletters")  # settings without a broker, none running locally
    assert page.status_code == 200
    assert 'class="problem"' in page.text and "Traceback" not in page.text
