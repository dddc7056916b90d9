"""Keeps the webhook subscriptions alive: one at Graph per enabled user's folder, one at BC per
company (when BC offers contact webhooks).

Each round: create what is missing, renew what expires within a third of its lifetime, recreate
what the service no longer knows (404 on renew), delete what belongs to a disabled or removed
user. Every subscription gets a fresh random clientState, stored right after the service
accepted it (the subscription id is only known then); a notification racing that store is
refused and redelivered by Graph, and BC sends its first batch only after its delay. Graph
lifecycle events (from `graph.notifications`): `reauthorizationRequired` reauthorizes,
`subscriptionRemoved` recreates. A recreated subscription may have missed notifications, so it
queues a "Sync" for that user.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaProducer

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import NotFound
from contactsync.clients.graph import GraphClient, new_client_state
from contactsync.kafka.io import make_consumer, make_producer
from contactsync.kafka.topics import GRAPH_NOTIFICATIONS, SYNC_COMMANDS, topic_name
from contactsync.logs import get_logger
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import Subscription, SubscriptionService
from contactsync.sync.services import open_services
from schemas.envelope import MessageError, decode, encode, wrap
from schemas.messages import CommandKind, GraphLifecycle, LifecycleEvent, SyncCommand
from schemas.setup import UserSetup

GROUP_ID = "contactsync-subscriptions"
GRAPH_LIFETIME = timedelta(minutes=4200)  # under Graph's 4,230-minute maximum (reference 3.2)
BC_LIFETIME = timedelta(days=3)


def _parse(stamp: Any) -> datetime:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


class SubscriptionKeeper:
    def __init__(self, settings: Settings, store: Store, graph: GraphClient, bc: BcClient,
                 producer: KafkaProducer, *,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not settings.webhook_public_url:
            raise ValueError("CONTACTSYNC_WEBHOOK_PUBLIC_URL is needed to receive notifications")
        self.settings, self.store, self.graph, self.bc = settings, store, graph, bc
        self.producer, self.now = producer, now
        self.base = settings.webhook_public_url.rstrip("/")

    # --- rounds -------------------------------------------------------------------------------
    async def run_once(self) -> None:
        await self._keep_graph()
        await self._keep_bc()

    async def _keep_graph(self) -> None:
        held = {s.user_id: s for s in
                self.store.subscriptions.list_all(service=SubscriptionService.GRAPH)}
        for setup in self.store.setups.list_all(enabled=True):
            sub = held.pop(setup.user_id, None)
            if sub is None:
                await self._create_graph(setup, recreated=False)
            elif self._due(sub, GRAPH_LIFETIME):
                try:
                    renewed = await self.graph.renew_subscription(
                        sub.subscription_id, self.now() + GRAPH_LIFETIME)
                    self._store(sub, _parse(renewed["expirationDateTime"]))
                except NotFound:
                    await self._recreate_graph(sub, setup)
        for orphan in held.values():  # the user was disabled or removed
            await self.graph.delete_subscription(orphan.subscription_id)
            self.store.subscriptions.delete(orphan.subscription_id)

    async def _keep_bc(self) -> None:
        held = self.store.subscriptions.list_all(service=SubscriptionService.BC,
                                                 company=self.bc.company_id)
        if not await self.bc.webhook_supported():
            return  # the change feed polls instead
        if not held:
            await self._create_bc()
            return
        for sub in held:
            if not self._due(sub, BC_LIFETIME):
                continue
            try:
                current = await self.bc.get_subscription(sub.subscription_id)
                renewed = await self.bc.renew_subscription(
                    sub.subscription_id, str(current.get("@odata.etag", "*")))
                self._store(sub, _parse(renewed["expirationDateTime"]))
            except NotFound:
                self.store.subscriptions.delete(sub.subscription_id)
                await self._create_bc()

    def _due(self, sub: Subscription, lifetime: timedelta) -> bool:
        return sub.expiration - self.now() < lifetime / 3

    # --- create -------------------------------------------------------------------------------
    async def _create_graph(self, setup: UserSetup, *, recreated: bool) -> None:
        folder_id = await self.graph.find_or_create_folder(setup.mailbox, setup.folder_name)
        resource = f"users/{setup.mailbox}/contactFolders/{folder_id}/contacts"
        client_state = new_client_state()
        created = await self.graph.create_subscription(
            resource, f"{self.base}/webhooks/graph", f"{self.base}/webhooks/graph/lifecycle",
            client_state, self.now() + GRAPH_LIFETIME)
        self.store.subscriptions.upsert(Subscription(
            subscription_id=str(created["id"]), service=SubscriptionService.GRAPH,
            resource=resource, client_state=client_state,
            expiration=_parse(created["expirationDateTime"]),
            notification_url=f"{self.base}/webhooks/graph", user_id=setup.user_id))
        if recreated:
            self._queue_sync(setup.user_id, "subscription recreated")

    async def _recreate_graph(self, old: Subscription, setup: UserSetup) -> None:
        self.store.subscriptions.delete(old.subscription_id)
        await self._create_graph(setup, recreated=True)

    async def _create_bc(self) -> None:
        client_state = new_client_state()
        created = await self.bc.create_subscription(f"{self.base}/webhooks/bc", client_state)
        self.store.subscriptions.upsert(Subscription(
            subscription_id=str(created["subscriptionId"]), service=SubscriptionService.BC,
            resource=str(created.get("resource", "")), client_state=client_state,
            expiration=_parse(created["expirationDateTime"]),
            notification_url=f"{self.base}/webhooks/bc", company=self.bc.company_id))

    def _store(self, sub: Subscription, expiration: datetime) -> None:
        self.store.subscriptions.upsert(Subscription(
            subscription_id=sub.subscription_id, service=sub.service, resource=sub.resource,
            client_state=sub.client_state, expiration=expiration,
            notification_url=sub.notification_url, user_id=sub.user_id, company=sub.company))

    def _queue_sync(self, user_id: str, reason: str) -> None:
        command = SyncCommand(user_id=user_id, kind=CommandKind.SYNC, reason=reason)
        future = self.producer.send(topic_name(self.settings, SYNC_COMMANDS),
                                    key=user_id.encode(), value=encode(wrap(command)))
        self.producer.flush(timeout=30)
        future.get(timeout=30)

    # --- lifecycle ----------------------------------------------------------------------------
    async def on_lifecycle(self, event: GraphLifecycle) -> None:
        sub = self.store.subscriptions.get(event.subscription_id)
        setup = self.store.setups.get(event.user_id)
        if sub is None or setup is None or not setup.enabled:
            return
        if event.event is LifecycleEvent.REAUTHORIZATION_REQUIRED:
            try:
                await self.graph.reauthorize_subscription(sub.subscription_id)
            except NotFound:
                await self._recreate_graph(sub, setup)
        elif event.event is LifecycleEvent.SUBSCRIPTION_REMOVED:
            await self._recreate_graph(sub, setup)
        # `missed`: the router queues a sync for the user.


def run_subscriptions(settings: Settings, store: Store, stop: threading.Event,
                      round_seconds: float = 60.0) -> None:
    """The `subscriptions` role: a round now and every `round_seconds`, lifecycle events as
    they come, until `stop`."""
    log = get_logger("contactsync.subscriptions")
    loop = asyncio.new_event_loop()
    producer = make_producer(settings.kafka_bootstrap_servers)
    consumer = make_consumer(settings.kafka_bootstrap_servers, GROUP_ID,
                             topic_name(settings, GRAPH_NOTIFICATIONS))
    services_cm = open_services(settings, store)
    try:
        services = loop.run_until_complete(services_cm.__aenter__())
        keeper = SubscriptionKeeper(settings, store, services.graph, services.bc, producer)
        next_round = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_round:
                try:
                    loop.run_until_complete(keeper.run_once())
                    next_round = time.monotonic() + round_seconds
                except Exception as exc:  # a service away: try again soon
                    log.warning("subscription round failed; retrying", error=exc)
                    next_round = time.monotonic() + 5.0
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        payload = decode(record.value).payload
                    except MessageError:
                        continue
                    if isinstance(payload, GraphLifecycle):
                        loop.run_until_complete(keeper.on_lifecycle(payload))
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
        loop.run_until_complete(services_cm.__aexit__(None, None, None))
        loop.close()
