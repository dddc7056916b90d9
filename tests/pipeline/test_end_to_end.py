"""The whole pipeline, as `contactsync run` runs it: real broker, emulators, the real HTTP
webhook, every role in one process. Each test changes something as a person would and waits
for the result a user would see."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.graph import GraphEmulatorConfig
from contactsync.emulators.running import RunningEmulators, start_emulators
from contactsync.engine.links import SyncMode
from contactsync.kafka.local_broker import free_port
from contactsync.kafka.topics import ensure_topics_at
from contactsync.pipeline import Pipeline
from contactsync.producers import bc_changes
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import SubscriptionService
from contactsync.sync.runner import sync_user

pytestmark = pytest.mark.kafka

ANNA = "anna@contoso.test"  # every contact
BEN = "ben@contoso.test"  # city = Seattle only
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
    """Poll `check` until it returns a truthy value (the pipeline is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


@dataclass
class System:
    settings: Settings
    emulators: RunningEmulators
    store: Store
    pipeline: Pipeline

    def folder(self, mailbox: str) -> dict[str, dict[str, Any]]:
        graph = self.emulators.graph
        folders = graph.state.child_folders(graph.state.user(mailbox))
        folder = next(f for f in folders if f.display_name == "Business Central")
        return {(c.get("emailAddresses") or [{}])[0].get("address", "").lower(): c
                for c in graph.contacts(mailbox, str(folder.id))}

    def bc_by_email(self) -> dict[str, dict[str, Any]]:
        return {c["email"].lower(): c for c in self.emulators.bc.contacts() if c["email"]}

    def writes(self) -> int:
        total = 0
        for snap in (self.emulators.graph.counters_snapshot(),
                     self.emulators.bc.counters_snapshot()):
            total += sum(r["count"] for r in snap["by_route"]
                         if r["method"] in ("POST", "PATCH", "DELETE")
                         and "subscriptions" not in r["route"])
        return total

    def quiet(self, seconds: float = 3.0, timeout: float = 40.0) -> int:
        """Wait until no write happens for `seconds`; the write count then."""
        deadline = time.monotonic() + timeout
        last, since = self.writes(), time.monotonic()
        while time.monotonic() - since < seconds:
            assert time.monotonic() < deadline, "the pipeline never went quiet"
            time.sleep(0.3)
            now = self.writes()
            if now != last:
                last, since = now, time.monotonic()
        return last


def _person(name: str, email: str, city: str) -> dict[str, Any]:
    return {"displayName": name, "email": email, "type": "Person", "city": city}


async def _initial_sync(settings: Settings, store: Store) -> None:
    graph = GraphClient.create(settings.graph_base_url)
    bc = await BcClient.create(settings.bc_base_url, settings.bc_company)
    try:
        for setup in store.setups.list_all():
            await sync_user(setup, SyncMode.FULL, graph=graph, bc=bc, store=store)
    finally:
        await bc.aclose()
        await graph.close()


@pytest.fixture
def bc_webhooks() -> bool:
    """Does BC offer webhooks on contacts? `BOTH_WAYS` runs a test with and without."""
    return True


# BC's side both ways: notifications from a live BC subscription, or (contacts not in
# webhookSupportedResources) fast polling and id scans for deletions.
BOTH_WAYS = pytest.mark.parametrize("bc_webhooks", [True, False],
                                    ids=["bc-webhooks", "bc-polling"])


@pytest.fixture
def system(kafka_settings: Settings, bc_webhooks: bool) -> Iterator[System]:
    with running_system(kafka_settings, bc_webhooks) as running:
        yield running


@contextlib.contextmanager
def running_system(kafka_settings: Settings, bc_webhooks: bool = True,
                   bc_notification_delay: float | None = None) -> Iterator[System]:
    """Topics, emulators with two users and three BC contacts, a first Full sync, then every
    role running on `kafka_settings`' broker (with its security, if any). BC notifies after
    50 ms; or after `bc_notification_delay` seconds, with the change feed's timer (which
    would find the change first) at an hour."""
    ensure_topics_at(kafka_settings, kafka_settings)
    bc_config = BcEmulatorConfig.for_tests(webhooks_supported=bc_webhooks)
    if bc_notification_delay is not None:
        bc_config.notification_delay_seconds = bc_notification_delay
    emulators = start_emulators(graph_config=GraphEmulatorConfig.fast(), bc_config=bc_config)
    port = free_port()
    settings = kafka_settings.model_copy(update={
        "graph_base_url": emulators.graph_base_url,
        "bc_base_url": emulators.bc_base_url,
        "bc_company": emulators.bc.company_id,
        "webhook_public_url": f"http://127.0.0.1:{port}",
        "bc_deletion_scan_seconds": 1.0,
        **({} if bc_notification_delay is None else {"bc_poll_seconds": 3600.0}),
    })
    store = Store.open(settings.database_url)
    for mailbox, contact_filter in ((ANNA, {}), (BEN, {"city": "Seattle"})):
        emulators.graph.add_user(mailbox)
        store.setups.add(UserSetup(user_id=mailbox, mailbox=mailbox,
                                   contact_filter=contact_filter))
    bc = emulators.bc
    bc.create_contact(_person("Sea One", "sea1@example.com", "Seattle"))
    bc.create_contact(_person("Sea Two", "sea2@example.com", "Seattle"))
    bc.create_contact(_person("Lon One", "lon1@example.com", "London"))
    asyncio.run(_initial_sync(settings, store))
    pipeline = Pipeline(settings, store, webhook_port=port)
    pipeline.start()
    running = System(settings, emulators, store, pipeline)
    try:
        eventually(lambda: len(store.subscriptions.list_all(service=SubscriptionService.GRAPH))
                   == 2 and bool(store.subscriptions.list_all(service=SubscriptionService.BC))
                   is bc_webhooks,
                   what="subscriptions for both users (and the company, with BC webhooks)")
        running.quiet(1.0)
        yield running
    finally:
        pipeline.stop()
        assert not pipeline.failed_roles, pipeline.failed_roles
        store.close()
        emulators.stop()


@BOTH_WAYS
def test_a_bc_edit_reaches_every_user_whose_filter_matches_and_no_other(system: System):
    bc = system.emulators.bc
    sea = system.bc_by_email()["sea1@example.com"]
    lon = system.bc_by_email()["lon1@example.com"]
    bc.update_contact(sea["id"], {"jobTitle": "Buyer"})
    bc.update_contact(lon["id"], {"jobTitle": "Engineer"})
    eventually(lambda: system.folder(ANNA)["sea1@example.com"].get("jobTitle") == "Buyer"
               and system.folder(BEN)["sea1@example.com"].get("jobTitle") == "Buyer"
               and system.folder(ANNA)["lon1@example.com"].get("jobTitle") == "Engineer",
               what="the BC edits in the folders")
    system.quiet()
    assert "lon1@example.com" not in system.folder(BEN)


def test_an_outlook_edit_reaches_bc_and_our_writes_cause_no_more_writes(system: System):
    contact = system.folder(ANNA)["lon1@example.com"]
    system.emulators.graph.person_update_contact(ANNA, contact["id"], {"jobTitle": "Poet"})
    eventually(lambda: system.bc_by_email()["lon1@example.com"]["jobTitle"] == "Poet",
               what="the Outlook edit in BC")
    settled = system.quiet()
    time.sleep(3)  # any echo of our own writes would show up as more writes now
    assert system.writes() == settled, "an echo of our own write caused another write"


def test_an_outlook_edit_reaches_the_other_users_before_bc_tells_of_it(kafka_settings: Settings):
    """BC tells of a change only after its notification delay (30 s on a real tenant; the
    change feed's own timer held off too): an Outlook edit the applier took to BC reaches the
    other users holding the contact from the applier's own write, in seconds."""
    with running_system(kafka_settings, bc_notification_delay=30.0) as system:
        # The feed polls every 5 s until it reads that the BC subscription is live (the store
        # is asked every 5 s): past that, only BC's notification would tell it of the edit.
        time.sleep(bc_changes.DEFAULT_FALLBACK_POLL_INTERVAL + bc_changes.SUBSCRIBED_TTL_S + 1)
        contact = system.folder(ANNA)["sea1@example.com"]
        system.emulators.graph.person_update_contact(ANNA, contact["id"], {"jobTitle": "Poet"})
        eventually(lambda: system.folder(BEN)["sea1@example.com"].get("jobTitle") == "Poet",
                   timeout=10.0, what="Anna's Outlook edit in Ben's folder, BC's notice pending")
        assert system.bc_by_email()["sea1@example.com"]["jobTitle"] == "Poet"


def test_new_outlook_contacts_with_name_and_email_go_to_bc_and_others_do_not(system: System):
    graph = system.emulators.graph
    folder_id = next(str(f.id) for f in graph.state.child_folders(graph.state.user(ANNA))
                     if f.display_name == "Business Central")
    graph.person_create_contact(ANNA, folder_id, {
        "displayName": "Grace Hopper", "emailAddresses": [{"address": "grace@example.com"}]})
    graph.person_create_contact(ANNA, folder_id, {"displayName": "No Email"})
    eventually(lambda: "grace@example.com" in system.bc_by_email(), what="Grace in BC")
    system.quiet()
    names = [c["displayName"] for c in system.emulators.bc.contacts()]
    assert names.count("Grace Hopper") == 1 and "No Email" not in names


@BOTH_WAYS
def test_when_both_sides_change_bc_wins(system: System):
    sea = system.bc_by_email()["sea2@example.com"]
    contact = system.folder(ANNA)["sea2@example.com"]
    system.emulators.graph.person_update_contact(ANNA, contact["id"], {"jobTitle": "Poet"})
    system.emulators.bc.update_contact(sea["id"], {"jobTitle": "Mathematician"})
    system.quiet()
    # Both folders, each in its own time (without BC webhooks the change waits for a poll).
    eventually(lambda: all(system.folder(who)["sea2@example.com"].get("jobTitle")
                           == "Mathematician" for who in (ANNA, BEN)),
               what="BC's value in Outlook")
    system.quiet()
    assert system.bc_by_email()["sea2@example.com"]["jobTitle"] == "Mathematician"
    assert all(system.folder(who)["sea2@example.com"].get("jobTitle") == "Mathematician"
               for who in (ANNA, BEN))


@BOTH_WAYS
def test_a_bc_deletion_and_a_contact_leaving_a_filter_leave_the_folders(system: System):
    bc = system.emulators.bc
    by_email = system.bc_by_email()
    bc.delete_contact(by_email["sea1@example.com"]["id"])
    bc.update_contact(by_email["sea2@example.com"]["id"], {"city": "London"})
    eventually(lambda: "sea1@example.com" not in system.folder(ANNA)
               and "sea1@example.com" not in system.folder(BEN)
               and "sea2@example.com" not in system.folder(BEN),
               what="the deleted and the moved contact out of the folders")
    system.quiet()
    assert system.folder(ANNA)["sea2@example.com"]["businessAddress"]["city"] == "London"


def test_forged_and_duplicated_notifications_change_nothing_wrongly(system: System):
    [sub] = system.store.subscriptions.list_all(service=SubscriptionService.GRAPH,
                                                user_id=BEN)
    contact = system.folder(BEN)["sea1@example.com"]
    notification = {"value": [{
        "subscriptionId": sub.subscription_id, "clientState": sub.client_state,
        "changeType": "updated", "resource": f"Users/{ANNA}/Contacts/{contact['id']}",
        "resourceData": {"id": contact["id"], "@odata.etag": "W/\"x\""},
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "tenantId": "t"}]}
    url = f"{system.pipeline.webhook_url}/webhooks/graph"
    before = system.quiet()
    # A wrong clientState is refused and nothing is published.
    forged = {"value": [dict(notification["value"][0], clientState="guess")]}
    assert httpx.post(url, json=forged).status_code == 403
    # The right one, five times over and naming another user's contact: hints only.
    for _ in range(5):
        assert httpx.post(url, json=notification).status_code == 202
    assert system.quiet() == before, "hints without a change cost no write"
