"""The webhook over real HTTP (uvicorn + httpx) against the real broker."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from contactsync.http_server import BackgroundServer, free_port
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import (
    BC_NOTIFICATIONS,
    GRAPH_LIFECYCLE,
    GRAPH_NOTIFICATIONS,
    ensure_topics_at,
    topic_name,
)
from contactsync.logs import configure_logging
from contactsync.producers.webhook import StoreRegistry, SubscriptionInfo, create_webhook_app
from contactsync.schemas.envelope import decode
from contactsync.settings import Settings

pytestmark = pytest.mark.kafka

GRAPH_SUB = "6f1a1c3e-0000-4000-8000-000000000001"
BC_SUB = "bc-sub-1"
SECRET = "s3cret-client-state"
USER = "user-42"
COMPANY = "company-7"


class DictRegistry:
    """Our registry's test double: a dict (not a stand-in for Kafka)."""

    def __init__(self, *infos: SubscriptionInfo) -> None:
        self.infos = {info.subscription_id: info for info in infos}
        self.calls = 0

    def lookup(self, subscription_id: str) -> SubscriptionInfo | None:
        self.calls += 1
        return self.infos.get(subscription_id)


def _registry() -> DictRegistry:
    return DictRegistry(
        SubscriptionInfo(GRAPH_SUB, "graph", USER, SECRET),
        SubscriptionInfo(BC_SUB, "bc", COMPANY, SECRET),
    )


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    small = kafka_settings.model_copy(update={"webhook_max_body_bytes": 4096})
    ensure_topics_at(small.kafka_bootstrap_servers, small)
    return small


@pytest.fixture
def server(settings: Settings) -> Iterator[BackgroundServer]:
    producer = make_producer(settings.kafka_bootstrap_servers)
    app = create_webhook_app(settings, _registry(), producer)
    with BackgroundServer(app) as srv:
        yield srv
    producer.close(timeout=5)


def _read(settings: Settings, base: str, timeout: float = 3.0, expect: int = 1) -> list:
    """Every record of a topic, from the beginning, without a group."""
    topic = topic_name(settings, base)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                             enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= expect:
                # One more short poll: anything extra would be a duplicate.
                for batch in consumer.poll(timeout_ms=300).values():
                    records.extend(batch)
                break
        return records
    finally:
        consumer.close()


def _count(settings: Settings, base: str) -> int:
    topic = topic_name(settings, base)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def _graph_item(sub: str = GRAPH_SUB, state: str | None = SECRET, contact: str = "c-1") -> dict:
    return {
        "subscriptionId": sub,
        "subscriptionExpirationDateTime": "2026-11-28T00:00:00Z",
        "changeType": "updated",
        "resource": f"Users/{USER}/Contacts/{contact}",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Contact",
                         "@odata.id": f"Users/{USER}/Contacts/{contact}",
                         "@odata.etag": 'W/"EQAAABYAAA"', "id": contact},
        "clientState": state,
        "tenantId": "tenant-1",
    }


def _bc_item(change: str = "collection", state: str = SECRET) -> dict:
    return {
        "subscriptionId": BC_SUB,
        "clientState": state,
        "expirationDateTime": "2026-11-28T00:00:00Z",
        "resource": "api/v2.0/companies(c7)/contacts"
                    "?$filter=lastModifiedDateTime%20gt%202026-11-25T10:00:00Z",
        "changeType": change,
        "lastModifiedDateTime": "2026-11-25T10:00:00.050Z",
    }


@pytest.mark.parametrize("path", ["/webhooks/graph", "/webhooks/graph/lifecycle", "/webhooks/bc"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_handshake_echoes_the_url_decoded_token(server: BackgroundServer, path: str, method: str):
    token = "Validation: Testing client application reachability+ & /x?=%"
    url = f"{server.url}{path}?validationToken={quote(token, safe='')}"
    response = httpx.request(method, url, content=b"" if method == "POST" else None,
                             headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == token
    assert response.elapsed < timedelta(seconds=1)


def test_get_without_token_and_empty_token_are_bad_requests(server: BackgroundServer):
    assert httpx.get(f"{server.url}/webhooks/graph").status_code == 400
    assert httpx.get(f"{server.url}/webhooks/bc?validationToken=").status_code == 400


def test_graph_notification_is_published_once_keyed_by_subscription(
    server: BackgroundServer, settings: Settings
):
    response = httpx.post(f"{server.url}/webhooks/graph", json={"value": [_graph_item()]})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "refused": 0}
    # 202 means acked by the broker: the record is readable right away, exactly once.
    records = _read(settings, GRAPH_NOTIFICATIONS, timeout=3)
    assert len(records) == 1
    record = records[0]
    assert record.key == GRAPH_SUB.encode()
    envelope = decode(record.value)
    assert envelope.type == "graph.notification"
    payload = envelope.payload
    assert (payload.subscription_id, payload.user_id) == (GRAPH_SUB, USER)
    assert (payload.contact_id, payload.etag, payload.change_type) == ("c-1", 'W/"EQAAABYAAA"',
                                                                      "updated")


def test_lifecycle_notification_is_published(server: BackgroundServer, settings: Settings):
    item = {"subscriptionId": GRAPH_SUB, "lifecycleEvent": "reauthorizationRequired",
            "clientState": SECRET, "tenantId": "t", "subscriptionExpirationDateTime": "x"}
    response = httpx.post(f"{server.url}/webhooks/graph/lifecycle", json={"value": [item]})
    assert response.status_code == 202, response.text
    # Lifecycle items may also come to the notification URL (same URL allowed by Graph).
    item["lifecycleEvent"] = "missed"
    assert httpx.post(f"{server.url}/webhooks/graph", json={"value": [item]}).status_code == 202
    # On a topic of their own: the subscription keeper reads none of the change notifications.
    records = _read(settings, GRAPH_LIFECYCLE, expect=2)
    events = sorted(str(decode(r.value).payload.event) for r in records)
    assert events == ["missed", "reauthorizationRequired"]
    assert all(decode(r.value).type == "graph.lifecycle" and r.key == GRAPH_SUB.encode()
               for r in records)
    assert _count(settings, GRAPH_NOTIFICATIONS) == 0


def test_a_body_mixing_changes_and_lifecycle_items_splits_them_by_topic(
    server: BackgroundServer, settings: Settings
):
    lifecycle = {"subscriptionId": GRAPH_SUB, "lifecycleEvent": "subscriptionRemoved",
                 "clientState": SECRET, "tenantId": "t"}
    body = {"value": [_graph_item(contact="c-9"), lifecycle]}
    response = httpx.post(f"{server.url}/webhooks/graph", json=body)
    assert response.json() == {"accepted": 2, "refused": 0}
    changes = [decode(r.value) for r in _read(settings, GRAPH_NOTIFICATIONS)]
    assert [(e.type, e.payload.contact_id) for e in changes] == [("graph.notification", "c-9")]
    events = [decode(r.value) for r in _read(settings, GRAPH_LIFECYCLE)]
    assert [(e.type, str(e.payload.event)) for e in events] == [
        ("graph.lifecycle", "subscriptionRemoved")]


def test_lifecycle_route_refuses_change_items(server: BackgroundServer):
    response = httpx.post(f"{server.url}/webhooks/graph/lifecycle",
                          json={"value": [_graph_item()]})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"


def test_bc_collection_notification_is_published_keyed_by_company(
    server: BackgroundServer, settings: Settings
):
    response = httpx.post(f"{server.url}/webhooks/bc", json={"value": [_bc_item()]})
    assert response.status_code == 202, response.text
    records = _read(settings, BC_NOTIFICATIONS)
    assert len(records) == 1 and records[0].key == COMPANY.encode()
    payload = decode(records[0].value).payload
    assert payload.change_type == "collection" and payload.company_id == COMPANY
    assert payload.last_modified == datetime(2026, 11, 25, 10, 0, 0, 50_000, tzinfo=UTC)


@pytest.mark.parametrize(
    "item",
    [_graph_item(state="wrong"), _graph_item(state=None), _graph_item(sub="not-ours")],
    ids=["wrong-client-state", "missing-client-state", "unknown-subscription"],
)
def test_refused_items_are_403_and_not_published(
    server: BackgroundServer, settings: Settings, item: dict
):
    response = httpx.post(f"{server.url}/webhooks/graph", json={"value": [item]})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert _count(settings, GRAPH_NOTIFICATIONS) == 0


def test_a_bc_subscription_posted_to_the_graph_route_is_refused(server: BackgroundServer):
    item = _graph_item(sub=BC_SUB)
    assert httpx.post(f"{server.url}/webhooks/graph", json={"value": [item]}).status_code == 403


def test_mixed_batch_publishes_the_good_items_and_answers_202(
    server: BackgroundServer, settings: Settings
):
    body = {"value": [_graph_item(contact="good"), _graph_item(state="bad"),
                      _graph_item(sub="unknown")]}
    response = httpx.post(f"{server.url}/webhooks/graph", json=body)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "refused": 2}
    records = _read(settings, GRAPH_NOTIFICATIONS)
    assert [decode(r.value).payload.contact_id for r in records] == ["good"]


def test_oversized_body_is_413(server: BackgroundServer):
    body = json.dumps({"value": [_graph_item(contact="x" * 5000)]}).encode()
    response = httpx.post(f"{server.url}/webhooks/graph", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(10):
            yield b" " * 1000

    response = httpx.post(f"{server.url}/webhooks/graph", content=chunks(),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_wrong_content_type_is_415(server: BackgroundServer):
    body = json.dumps({"value": [_graph_item()]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = httpx.post(f"{server.url}/webhooks/graph", content=body, headers=headers)
        assert response.status_code == 415, content_type


def test_truncated_json_and_schema_errors_are_400_with_a_reason(server: BackgroundServer):
    body = json.dumps({"value": [_graph_item()]})[:-5]
    response = httpx.post(f"{server.url}/webhooks/graph", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    missing = _graph_item()
    del missing["resource"]
    response = httpx.post(f"{server.url}/webhooks/bc", json={"value": [missing]})
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "invalid_body" and "resource" in error["detail"]
    assert SECRET not in response.text  # errors never echo values
    for bad in ([], {"value": []}, {"value": "x"}, "null", {"value": [None]}):
        response = httpx.post(f"{server.url}/webhooks/graph", json=bad)
        assert response.status_code == 400, bad


def test_metrics_count_requests_and_rejections_by_reason(server: BackgroundServer):
    httpx.post(f"{server.url}/webhooks/graph", json={"value": [_graph_item(state="bad")]})
    httpx.post(f"{server.url}/webhooks/graph", json={"value": [_graph_item(sub="x"),
                                                               _graph_item()]})
    httpx.post(f"{server.url}/webhooks/graph", content=b"{", headers={
        "Content-Type": "application/json"})
    text = httpx.get(f"{server.url}/metrics").text
    assert ('contactsync_webhook_notifications_rejected_total{reason="client_state_mismatch",'
            'route="graph"} 1.0') in text
    assert ('contactsync_webhook_notifications_rejected_total{reason="unknown_subscription",'
            'route="graph"} 1.0') in text
    assert 'contactsync_webhook_notifications_accepted_total{route="graph"} 1.0' in text
    assert 'contactsync_webhook_requests_total{outcome="forbidden",route="graph"} 1.0' in text
    assert 'contactsync_webhook_requests_total{outcome="bad_request",route="graph"} 1.0' in text
    assert "contactsync_webhook_publish_seconds_count 1.0" in text


def test_health_ready_and_openapi(server: BackgroundServer):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {"/webhooks/graph", "/webhooks/graph/lifecycle", "/webhooks/bc"} <= set(
        document["paths"])


def test_registry_lookups_are_cached(settings: Settings):
    registry = _registry()
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        with BackgroundServer(create_webhook_app(settings, registry, producer)) as srv:
            for _ in range(5):
                httpx.post(f"{srv.url}/webhooks/graph", json={"value": [_graph_item()]})
        assert registry.calls == 1
    finally:
        producer.close(timeout=5)


def test_broker_down_answers_503_quickly_and_the_retry_is_not_lost(settings: Settings):
    dead = make_producer(f"127.0.0.1:{free_port()}", api_version=(4, 0), max_block_ms=500)
    app = create_webhook_app(settings, _registry(), dead, publish_timeout=0.8)
    body = {"value": [_graph_item(contact="retried")]}
    try:
        with BackgroundServer(app) as srv:
            started = time.monotonic()
            response = httpx.post(f"{srv.url}/webhooks/graph", json=body, timeout=10)
            assert response.status_code == 503
            assert response.headers["retry-after"].isdigit()
            assert time.monotonic() - started < 2.0
            assert httpx.get(f"{srv.url}/readyz").status_code == 503
            metrics = httpx.get(f"{srv.url}/metrics").text
            assert 'contactsync_webhook_requests_total{outcome="unavailable",route="graph"} 1.0' \
                in metrics
    finally:
        dead.close(timeout=1)
    # The sender retries (Graph and BC both do on 5xx) once the broker takes messages again.
    producer = make_producer(settings.kafka_bootstrap_servers)
    try:
        with BackgroundServer(create_webhook_app(settings, _registry(), producer)) as srv:
            assert httpx.post(f"{srv.url}/webhooks/graph", json=body).status_code == 202
    finally:
        producer.close(timeout=5)
    records = _read(settings, GRAPH_NOTIFICATIONS)
    assert [decode(r.value).payload.contact_id for r in records] == ["retried"]


def test_app_owned_producer_without_a_broker_answers_503(settings: Settings):
    nowhere = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    with BackgroundServer(create_webhook_app(nowhere, _registry())) as srv:
        response = httpx.post(f"{srv.url}/webhooks/graph", json={"value": [_graph_item()]})
        assert response.status_code == 503
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        assert httpx.get(f"{srv.url}/readyz").status_code == 503


def test_app_owned_producer_publishes_once_ready(settings: Settings):
    with BackgroundServer(create_webhook_app(settings, _registry())) as srv:
        deadline = time.monotonic() + 15
        while httpx.get(f"{srv.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "webhook never became ready"
            time.sleep(0.2)
        response = httpx.post(f"{srv.url}/webhooks/bc", json={"value": [_bc_item("updated")]})
        assert response.status_code == 202
    assert len(_read(settings, BC_NOTIFICATIONS)) == 1


def test_no_token_client_state_or_email_in_logs(settings: Settings):
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    try:
        producer = make_producer(settings.kafka_bootstrap_servers)
        try:
            with BackgroundServer(create_webhook_app(settings, _registry(), producer)) as srv:
                token = "tok-" + "z" * 20
                httpx.post(f"{srv.url}/webhooks/graph?validationToken={token}")
                item = _graph_item(state="wrong-secret-value")
                item["resource"] = "Users/jane.doe@contoso.com/Contacts/1"
                httpx.post(f"{srv.url}/webhooks/graph", json={"value": [item, _graph_item()]})
                httpx.post(f"{srv.url}/webhooks/graph", json={"value": [item]})
        finally:
            producer.close(timeout=5)
        logged = stream.getvalue()
        assert "refused" in logged  # something was logged at all
        for secret in (token, "wrong-secret-value", SECRET, "jane.doe@contoso.com"):
            assert secret not in logged
    finally:
        configure_logging()


def test_store_registry_adapter(tmp_path: Path):
    from contactsync.store import Store, Subscription, SubscriptionService

    with Store.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.subscriptions.upsert(Subscription(
            subscription_id="g1", service=SubscriptionService.GRAPH, resource="users/u/contacts",
            client_state="cs", expiration=datetime.now(UTC), notification_url="https://x",
            user_id="u1"))
        store.subscriptions.upsert(Subscription(
            subscription_id="b1", service=SubscriptionService.BC, resource="companies(c)/contacts",
            client_state="cs2", expiration=datetime.now(UTC), notification_url="https://x",
            company="c1"))
        registry = StoreRegistry(store)
        assert registry.lookup("g1") == SubscriptionInfo("g1", "graph", "u1", "cs")
        assert registry.lookup("b1") == SubscriptionInfo("b1", "bc", "c1", "cs2")
        assert registry.lookup("nope") is None


def test_cli_webhook_serves_from_the_store(settings: Settings, tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CONTACTSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONTACTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "CONTACTSYNC_LOG_FORMAT": "json",
    })
    exe = str(Path(sys.executable).parent / "contactsync")
    process = subprocess.Popen([exe, "webhook", "--port", str(port)], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"webhook did not become ready: {process.communicate()[1]!r}")
            time.sleep(0.2)
        assert httpx.get(f"{url}/webhooks/bc?validationToken=a%20b").text == "a b"
        # An empty store knows no subscription: refused, nothing published.
        response = httpx.post(f"{url}/webhooks/graph", json={"value": [_graph_item()]})
        assert response.status_code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
