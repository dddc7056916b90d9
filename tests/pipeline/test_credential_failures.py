"""Token failures never dead-letter: a refused credential pauses the applier with its commands
left on the topic (readiness failing, counted), a short Entra outage is retried through.

Tokens come from the local Entra endpoint (tests/entra_fixtures.py) through azure-identity;
the applier, the broker and the Graph and BC emulators are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from kafka import TopicPartition

from contactsync.consumers.applier import Applier
from contactsync.credential_health import HEALTH
from contactsync.emulators.running import RunningEmulators
from contactsync.health import READINESS, create_health_app, register_role_checks
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import DEADLETTER, SYNC_COMMANDS, topic_name
from contactsync.kafka.worker import RetryPolicy, Worker
from contactsync.schemas.envelope import encode, wrap
from contactsync.schemas.messages import CommandKind, ResultStatus, SyncCommand
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from tests.entra_fixtures import Entra, entra
from tests.kafka_fixtures import read_topic, start_tenant
from tests.pipeline.test_applier import read_results

__all__ = ["entra"]
pytestmark = pytest.mark.kafka

MAILBOX = "user1@contoso.test"
FAST = RetryPolicy(max_attempts=1000, base_delay=0.01, max_delay=0.05, timeout=0.5)


@dataclass
class Rig:
    settings: Settings
    emulators: RunningEmulators
    store: Store
    applier: Applier
    worker: Worker

    def send(self, n: int) -> list[str]:
        producer = make_producer(self.settings.kafka_bootstrap_servers)
        ids = []
        try:
            for _ in range(n):
                envelope = wrap(SyncCommand(user_id=MAILBOX, kind=CommandKind.SYNC))
                ids.append(str(envelope.event_id))
                producer.send(topic_name(self.settings, SYNC_COMMANDS), key=MAILBOX.encode(),
                              value=encode(envelope))
            producer.flush(timeout=10)
        finally:
            producer.close(timeout=5)
        return ids

    def run_until(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the applier did not get there in time"
            self.worker.run_once()

    def unconsumed(self) -> int:
        """Commands past the applier group's committed offsets."""
        consumer = self.worker.consumer
        topic = topic_name(self.settings, SYNC_COMMANDS)
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(tps)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)


@pytest.fixture
def rig(kafka_settings: Settings, entra: Entra) -> Iterator[Rig]:
    settings, emulators = start_tenant(kafka_settings, MAILBOX, azure_credential="secret")
    store = Store.open(settings.database_url)
    store.setups.add(UserSetup(user_id=MAILBOX, mailbox=MAILBOX))
    # Tokens shorter than the refresh margin: every request asks Entra, so a refusal shows at
    # once (as an expired secret does at the next renewal).
    entra.emulator.expires_in = 60
    applier = Applier(settings, store)
    worker = applier.build_worker(retry=FAST, credential_pause=0.2)
    register_role_checks(settings.kafka_bootstrap_servers, store)  # as `contactsync applier`
    try:
        yield Rig(settings, emulators, store, applier, worker)
    finally:
        READINESS.clear()
        worker.close()
        applier.close()
        store.close()
        emulators.stop()


async def readyz_and_metrics(rig: Rig) -> tuple[int, str, str]:
    """/readyz (its components as text) and /metrics of the process, as a role serves them."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_health_app()),
                                 base_url="http://role") as client:
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
    return ready.status_code, json.dumps(ready.json()["components"]), metrics.text


def _ok_results_for(rig: Rig, ids: list[str]) -> bool:
    done = {r.command_id for r in read_results(rig.settings) if r.status is ResultStatus.OK}
    return set(ids) <= done


def test_a_refused_credential_leaves_the_commands_on_the_topic(rig: Rig,
                                                                      entra: Entra) -> None:
    first = rig.send(1)
    rig.run_until(lambda: rig.applier.published == 1)
    assert _ok_results_for(rig, first)

    entra.emulator.refuse_code = "7000222"  # the client secret expired
    waiting = rig.send(3)
    rig.run_until(lambda: entra.emulator.counters["refused"] >= 3)  # tried, paused, again
    assert rig.applier.published == 1, "no result for a command that could not run"
    assert rig.unconsumed() == 3
    assert read_topic(rig.settings, DEADLETTER) == []
    status, detail, metrics = asyncio.run(readyz_and_metrics(rig))
    assert status == 503 and "AADSTS7000222" in detail and "AZURE_CLIENT_SECRET" in detail
    assert re.search(r'contactsync_component_ready\{component="(graph|bc)_credentials"\} 0\.0',
                     metrics)
    assert re.search(r'contactsync_credential_failures_total\{service="(graph|bc)"\}', metrics)

    entra.emulator.refuse_code = None  # an admin set a new secret
    rig.run_until(lambda: rig.applier.published == 4)
    assert _ok_results_for(rig, waiting)
    assert read_topic(rig.settings, DEADLETTER) == []
    assert HEALTH.readiness() == (True, "credential ok")


def test_a_short_entra_outage_is_retried_through(rig: Rig, entra: Entra) -> None:
    entra.emulator.outage_requests = 4
    ids = rig.send(2)
    rig.run_until(lambda: rig.applier.published == 2)
    assert _ok_results_for(rig, ids)
    assert entra.emulator.counters["unavailable"] == 4
    assert read_topic(rig.settings, DEADLETTER) == []
    assert HEALTH.readiness() == (True, "credential ok")  # transient: readiness stays
    _, _, metrics = asyncio.run(readyz_and_metrics(rig))
    assert re.search(r'contactsync_credential_failures_total\{service="(graph|bc)"\}', metrics)


def test_an_applier_started_with_a_refused_credential_waits_for_it(rig: Rig,
                                                                    entra: Entra) -> None:
    entra.emulator.refuse_code = "7000215"  # a wrong secret from the start
    ids = rig.send(2)
    stop = threading.Event()
    role = threading.Thread(target=rig.applier.run, args=(stop, rig.worker), daemon=True)
    role.start()
    try:
        wait_for(lambda: entra.emulator.counters["refused"] >= 3)
        assert role.is_alive() and rig.applier.published == 0
        assert not HEALTH.readiness()[0]
        entra.emulator.refuse_code = None
        wait_for(lambda: rig.applier.published == 2)
        assert _ok_results_for(rig, ids)
        assert read_topic(rig.settings, DEADLETTER) == []
    finally:
        stop.set()
        role.join(timeout=30)


def wait_for(done: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_a_token_graph_refuses_pauses_the_applier_too(rig: Rig) -> None:
    # Entra still issues tokens, but Graph answers 401 (consent revoked while a token lived).
    rig.emulators.graph.add_fault(kind="status", status=401, count=10_000)
    ids = rig.send(2)
    rig.run_until(lambda: not HEALTH.readiness()[0])
    for _ in range(3):  # paused, tried again, paused
        rig.worker.run_once()
    assert rig.applier.published == 0 and rig.unconsumed() == 2
    assert read_topic(rig.settings, DEADLETTER) == []
    status, detail, _ = asyncio.run(readyz_and_metrics(rig))
    assert status == 503 and "graph refused our token" in detail
    rig.emulators.graph.clear_faults()
    rig.run_until(lambda: rig.applier.published == 2)
    assert _ok_results_for(rig, ids)
    assert HEALTH.readiness() == (True, "credential ok")
