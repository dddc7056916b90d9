"""The whole pipeline (every role of `contactsync run`, the real webhook and broker) misses
changes: dropped Graph notifications, a BC edit made while it was stopped and a change-feed
watermark lost on the way. `reconcile --all --wait` through that pipeline repairs the drift,
and a second one writes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from contactsync.cli.main import app
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.kafka.local_broker import free_port
from contactsync.kafka.topics import ensure_topics_at
from contactsync.logs import configure_logging
from contactsync.pipeline import Pipeline
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import SubscriptionService
from tests.kafka_fixtures import role_env

pytestmark = pytest.mark.kafka

ANNA = "anna@contoso.test"
runner = CliRunner()


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)
    return value


def _reconcile_all() -> dict[str, Any]:
    try:
        result = runner.invoke(app, ["reconcile", "--all", "--wait", "--json",
                                     "--timeout", "60"])
    finally:
        configure_logging()  # off the runner's stream, which closes (the roles still log)
    assert result.exit_code == 0, result.output
    [line] = json.loads(result.stdout)["users"]
    return dict(line)


@pytest.fixture
def world(kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Settings, RunningEmulators, Store]]:
    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    emulators = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                                bc_config=BcEmulatorConfig.for_tests())
    port = free_port()
    settings = kafka_settings.model_copy(update={
        "graph_base_url": emulators.graph_base_url, "bc_base_url": emulators.bc_base_url,
        "bc_company": emulators.bc.company_id, "webhook_public_url": f"http://127.0.0.1:{port}",
        "reconcile_schedule": "off"})
    for name, value in role_env(settings).items():
        monkeypatch.setenv(name, value)
    store = Store.open(settings.database_url)
    emulators.graph.add_user(ANNA)
    store.setups.add(UserSetup(user_id=ANNA, mailbox=ANNA))
    try:
        yield settings, emulators, store
    finally:
        store.close()
        emulators.stop()


def _start(settings: Settings, store: Store, port: int) -> Pipeline:
    pipeline = Pipeline(settings, store, webhook_port=port)
    pipeline.start()
    eventually(lambda: store.subscriptions.list_all(service=SubscriptionService.GRAPH)
               and store.subscriptions.list_all(service=SubscriptionService.BC),
               what="the subscriptions")
    return pipeline


def _stop(pipeline: Pipeline) -> None:
    pipeline.stop()
    assert not pipeline.failed_roles, pipeline.failed_roles


def test_drift_the_pipeline_missed_is_repaired_by_one_reconcile_through_it(
        world: tuple[Settings, RunningEmulators, Store]):
    settings, emulators, store = world
    bc, graph = emulators.bc, emulators.graph
    port = int(settings.webhook_public_url.rsplit(":", 1)[1])
    people = [bc.create_contact({"displayName": f"P {i}", "email": f"p{i}@example.com",
                                 "type": "Person"}) for i in range(3)]
    pipeline = _start(settings, store, port)
    try:
        _reconcile_all()  # the first load (the feed may have brought some already)
        folder_id = next(str(f.id) for f in graph.state.child_folders(graph.state.user(ANNA))
                         if f.display_name == "Business Central")

        def folder() -> dict[str, dict[str, Any]]:
            return {c["emailAddresses"][0]["address"]: c for c in graph.contacts(ANNA, folder_id)}

        assert sorted(folder()) == ["p0@example.com", "p1@example.com", "p2@example.com"]

        # An Outlook edit whose notification Graph drops.
        admin = settings.graph_base_url.rsplit("/v1.0", 1)[0] + "/_emulator"
        httpx.post(f"{admin}/notifications/faults", json={"drop": 1}).raise_for_status()
        graph.person_update_contact(ANNA, folder()["p0@example.com"]["id"],
                                    {"jobTitle": "Poet"})
        eventually(lambda: graph.notification_stats()["dropped_by_fault"] == 1,
                   what="the notification dropped")
    finally:
        _stop(pipeline)
    # While stopped: a BC edit; and the change feed's watermark is lost (it starts from now).
    bc.update_contact(people[1]["id"], {"jobTitle": "Buyer"})
    store.state.set_watermark(bc.company_id, datetime.now(UTC) + timedelta(minutes=1))

    pipeline = _start(settings, store, port)
    try:
        time.sleep(2)  # the restarted feed's first round has run: it found nothing
        assert folder()["p1@example.com"].get("jobTitle") != "Buyer"
        assert bc.contact(people[0]["id"])["jobTitle"] != "Poet"

        repaired = _reconcile_all()
        assert (repaired["updated_outlook"], repaired["updated_bc"]) == (1, 1)
        assert folder()["p1@example.com"]["jobTitle"] == "Buyer"
        assert bc.contact(people[0]["id"])["jobTitle"] == "Poet"
        assert _reconcile_all()["writes"] == 0
    finally:
        _stop(pipeline)
