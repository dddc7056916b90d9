"""Every role can be watched: a role started alone with --metrics-port serves /healthz,
/readyz and /metrics, and its series move with real work (a sync through the emulators, a
record that cannot be applied)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer

from contactsync.clients.errors import Unauthorized
from contactsync.clients.graph import GraphClient
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.kafka.local_broker import free_port
from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at, topic_name
from contactsync.metrics import user_label
from contactsync.pipeline import Pipeline
from contactsync.schemas.envelope import encode, wrap
from contactsync.schemas.messages import CommandKind, SyncCommand
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from tests.kafka_fixtures import role_env
from tests.observability.scrape import samples, scrape
from tests.pipeline.test_end_to_end import eventually

pytestmark = pytest.mark.kafka

ANNA = "anna@contoso.test"
@pytest.fixture
def emulated(kafka_settings: Settings) -> Iterator[tuple[Settings, RunningEmulators]]:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    emulators = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                                bc_config=BcEmulatorConfig.for_tests())
    settings = kafka_settings.model_copy(update={
        "graph_base_url": emulators.graph_base_url,
        "bc_base_url": emulators.bc_base_url,
        "bc_company": emulators.bc.company_id,
    })
    emulators.graph.add_user(ANNA)
    emulators.bc.create_contact({"displayName": "Sea One", "email": "sea1@example.com",
                                 "type": "Person", "city": "Seattle"})
    with Store.open(settings.database_url) as store:
        store.setups.add(UserSetup(user_id=ANNA, mailbox=ANNA))
    try:
        yield settings, emulators
    finally:
        emulators.stop()


def _start_role(args: list[str], settings: Settings, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **role_env(settings), "CONTACTSYNC_STATE_DIR": str(tmp_path / "state")}
    env.pop("AZURE_CLIENT_ID", None)
    command = str(Path(sys.executable).parent / "contactsync")
    return subprocess.Popen([command, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _publish(settings: Settings, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    try:
        for value in values:
            producer.send(topic_name(settings, SYNC_COMMANDS), key=ANNA.encode(), value=value)
        producer.flush(10)
    finally:
        producer.close()


def test_the_applier_alone_reports_last_success_api_calls_lag_and_dead_letters(
        emulated: tuple[Settings, RunningEmulators], tmp_path: Path):
    settings, _emulators = emulated
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    role = _start_role(["applier", "--metrics-port", str(port)], settings, tmp_path)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                assert role.poll() is None, role.stderr.read().decode() if role.stderr else ""
                return False

        eventually(up, timeout=60, what="the applier's /healthz")
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert {"kafka", "store"} <= set(ready.json()["components"])

        _publish(settings, [encode(wrap(SyncCommand(user_id=ANNA, kind=CommandKind.SYNC))),
                            b"this is not an envelope"])
        label = user_label(ANNA)

        def moved() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            page = scrape(url)
            synced = samples(page, "contactsync_user_last_success_timestamp_seconds",
                             user=label)
            dead = samples(page, "contactsync_deadletter_messages_total")
            return page if synced and dead else None

        page = eventually(moved, timeout=60,
                      what="last success of the user and the dead letter")
        [(_, last_success)] = samples(page, "contactsync_user_last_success_timestamp_seconds",
                                      user=label)
        assert abs(last_success - time.time()) < 300  # a Unix time, not a duration
        [(dead_labels, dead)] = samples(page, "contactsync_deadletter_messages_total")
        assert dead == 1 and dead_labels["reason"]  # the error's type
        assert any(v > 0 for _, v in samples(page, "contactsync_api_requests_total",
                                              service="graph", status="200"))
        assert any(v > 0 for _, v in samples(page, "contactsync_api_requests_total",
                                              service="bc", method="GET"))
        topic = topic_name(settings, SYNC_COMMANDS)

        def caught_up() -> list[tuple[dict[str, str], float]] | None:
            lag = samples(scrape(url), "contactsync_consumer_lag", topic=topic)
            return lag if lag and all(value == 0 for _, value in lag) else None

        lag = eventually(caught_up, timeout=60, what="lag 0 on the commands topic")
        assert {lbls["partition"] for lbls, _ in lag} == {"0", "1", "2"}
        [(_, age)] = samples(scrape(url), "contactsync_oldest_unapplied_change_age_seconds")
        assert age == 0  # caught up: nothing waits
        assert "anna@" not in httpx.get(f"{url}/metrics").text  # ids, never addresses
    finally:
        role.terminate()
        role.wait(30)


def test_readyz_fails_while_the_broker_is_unreachable(kafka_settings: Settings):
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    store = Store.open(kafka_settings.database_url)
    try:
        pipeline = Pipeline(kafka_settings, store, roles=(), metrics_port=0,
                            metrics_host="127.0.0.1")
        pipeline.start()
        try:
            ready = httpx.get(f"{pipeline.health_url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
        finally:
            pipeline.stop()
        gone = kafka_settings.model_copy(
            update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
        pipeline = Pipeline(gone, store, roles=(), metrics_port=0, metrics_host="127.0.0.1")
        pipeline.start()
        try:
            down = httpx.get(f"{pipeline.health_url}/readyz", timeout=10)
            assert httpx.get(f"{pipeline.health_url}/healthz").status_code == 200
        finally:
            pipeline.stop()
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "not_ready"
        assert "no Kafka broker" in body["components"]["kafka"]
        assert body["components"]["store"] == "store reachable"
    finally:
        store.close()


def test_readyz_fails_while_a_service_refuses_our_token_and_throttles_are_counted(
        emulated: tuple[Settings, RunningEmulators]):
    settings, emulators = emulated
    store = Store.open(settings.database_url)
    pipeline = Pipeline(settings, store, roles=(), metrics_port=0, metrics_host="127.0.0.1")
    pipeline.start()

    async def list_folders() -> None:
        graph = GraphClient.create(settings.graph_base_url)
        try:
            await graph.list_folders(ANNA)
        finally:
            await graph.close()

    try:
        emulators.graph.add_fault(kind="status", status=401, count=1, route="contactFolders")
        with pytest.raises(Unauthorized):
            asyncio.run(list_folders())
        refused = httpx.get(f"{pipeline.health_url}/readyz", timeout=10)
        assert refused.status_code == 503
        assert refused.json()["components"]["graph_credentials"].startswith("not accepted")

        emulators.graph.add_fault(kind="status", status=429, retry_after=1, count=1,
                                  route="contactFolders")
        asyncio.run(list_folders())  # throttled once, then answered: the token works again
        assert httpx.get(f"{pipeline.health_url}/readyz", timeout=10).status_code == 200
        page = scrape(pipeline.health_url)
        assert samples(page, "contactsync_api_throttled_total", service="graph")[0][1] >= 1
        assert samples(page, "contactsync_api_requests_total", service="graph", status="401")
    finally:
        pipeline.stop()
        store.close()
