"""producers/subscriptions: the webhook subscriptions we hold, kept alive (Graph docs: change
notifications; BC docs: working with webhooks; docs/architecture.md "Flow").

What `SubscriptionKeeper.run_once()` makes true, each time it runs (every `interval`, 5 min):

- Graph: exactly one subscription per ENABLED user, on the user's folder
  (`users/{mailbox}/contactFolders/{folder id}/contacts`, created,updated,deleted, basic
  notifications to `{webhook_public_url}/webhooks/graph`, lifecycle events to
  `.../webhooks/graph/lifecycle`, expiring ~4,200 minutes out, under the 4,230 documented cap).
  A disabled or removed user's subscription is deleted.
- BC: one subscription per company (the client's; `.../webhooks/bc`), when BC says it offers
  webhooks on contacts; otherwise none, and the change feed polls faster (as it does when BC
  refuses the subscription POST: no live subscription is stored).
- Renewal when less than a third of the lifetime remains (Graph: PATCH expirationDateTime;
  BC: PATCH with If-Match and the subscription's notificationUrl, resource and clientState, as
  "Update subscriptions" shows it; it repeats the handshake).
- A subscription gone at the service (missing from its listing, or 404 on renew) is recreated.
  Subscriptions at the service that carry our notificationUrl but are not in the store (a crash
  between create and store) are deleted. Run one keeper per deployment.

Lifecycle events (`graph.lifecycle` on `graph.lifecycle`, group `contactsync-subscriptions`;
those an older webhook left on `graph.notifications`: producers/legacy_lifecycle.py):
`reauthorizationRequired` -> renew (a renewal also reauthorizes, and extends); a 404 -> recreate.
`subscriptionRemoved` -> recreate. `missed` -> nothing here: the router queues a sync.

Every Graph create publishes `SyncCommand(kind=sync)` for that user to `sync.commands` (keyed by
user id): "subscription recreated" when it replaces one, since notifications may have been lost
meanwhile; "subscription created" for a user's first one, for the reason below.

clientState, and when it is stored: each subscription gets a fresh random secret
(`contactsync.clients.graph.new_client_state`: 48 random bytes, 64 characters, under Graph's
128 and BC's 2,048). The store can only
hold it under the subscription id, which the service assigns in its answer to the create call,
and the webhook looks notifications up by that id. So the record is stored right after the
create returns; the handshake needs no record (the webhook echoes any validation token). A
notification that arrives in the few milliseconds in between is refused by the webhook (it is
not ours yet); the sync command published after every create reads whatever such a notification
would have announced. BC waits 30 s before its first notification, so it never meets that gap.
If storing fails, the new subscription is deleted again.

The Graph and BC clients are async: the keeper runs them on one event loop of its own (`loop`),
in the thread that calls `run`. Build the clients on that same loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaProducer

from contactsync import metrics
from contactsync.clients.bc import BcClient, parse_bc_datetime
from contactsync.clients.errors import NotFound, ServiceError
from contactsync.clients.graph import GraphClient, is_loopback, new_client_state
from contactsync.credential_health import when_credential_works
from contactsync.kafka.bridge import Bridge
from contactsync.kafka.io import make_producer
from contactsync.kafka.publish import Outgoing, Publish, Publisher
from contactsync.kafka.topics import GRAPH_LIFECYCLE, SYNC_COMMANDS, topic_name
from contactsync.kafka.worker import RetryPolicy, Worker, WorkRecord, build_worker
from contactsync.logs import get_logger
from contactsync.producers.legacy_lifecycle import drain_old_lifecycle
from contactsync.retry import backoff_delay
from contactsync.schemas.messages import CommandKind, GraphLifecycle, LifecycleEvent, SyncCommand
from contactsync.schemas.setup import UserSetup
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.store.records import Subscription, SubscriptionService
from contactsync.sync.services import ConfigError, Services, open_services

GROUP_ID = "contactsync-subscriptions"
GRAPH_LIFETIME = timedelta(minutes=4200)  # under the documented 4,230 (reference 3.2)
BC_LIFETIME = timedelta(days=3)  # BC's own, not ours to choose (reference c.4)
RENEW_WHEN_LEFT = 1 / 3  # renew once less than this share of the lifetime remains
DEFAULT_INTERVAL = 300.0
# A pass that could not keep every subscription (the webhook not up yet at a deployment, a
# refused handshake, a service away) comes again after 30 s, then 60, 120, ... up to the
# interval: a webhook that starts after the keeper is subscribed within 30 s, not 5 minutes
# later, and a BC that refuses subscriptions for good costs a warning per interval, as before.
FAILED_PASS_RETRY = 30.0
CREATED_REASON = "subscription created"
RECREATED_REASON = "subscription recreated"
GRAPH_PATH = "/webhooks/graph"
GRAPH_LIFECYCLE_PATH = "/webhooks/graph/lifecycle"
BC_PATH = "/webhooks/bc"


def _log() -> Any:
    return get_logger("contactsync.subscriptions")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _expiry(entity: dict[str, Any], fallback: datetime) -> datetime:
    text = entity.get("expirationDateTime")
    if not isinstance(text, str) or not text:
        return fallback
    value = parse_bc_datetime(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass
class KeeperReport:
    """What one `run_once` (or one lifecycle event) did; subscription ids."""

    created: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)  # the new ids
    renewed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # user id or company -> error


class SubscriptionKeeper:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        graph: GraphClient,
        bc: BcClient | None,
        producer: KafkaProducer,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], datetime] = _utcnow,
        graph_lifetime: timedelta = GRAPH_LIFETIME,
        bc_lifetime: timedelta = BC_LIFETIME,
        interval: float = DEFAULT_INTERVAL,
        failed_pass_retry: float = FAILED_PASS_RETRY,
    ) -> None:
        base = settings.webhook_public_url.rstrip("/")
        if not base:
            raise ConfigError("set CONTACTSYNC_WEBHOOK_PUBLIC_URL: the public base URL of the "
                              "webhook, where Graph and BC send notifications")
        if not base.lower().startswith("https://") and not is_loopback(graph.base_url):
            # Graph refuses an http notificationUrl ("Create subscription", learn.microsoft.com/
            # graph/api/subscription-post-subscriptions): say so once, not at every pass.
            raise ConfigError("set CONTACTSYNC_WEBHOOK_PUBLIC_URL to an https URL (an ingress "
                              "or a tunnel in front of the webhook): Graph only notifies https")
        self.settings = settings
        self.store = store
        self.graph = graph
        self.bc = bc
        self.producer = producer
        self.bridge = Bridge(loop)  # its own loop unless given one (the caller's clients')
        self.clock = clock
        self.graph_lifetime = graph_lifetime
        self.bc_lifetime = bc_lifetime
        self.interval = interval
        self.failed_pass_retry = failed_pass_retry
        self._failed_passes = 0  # passes in a row that could not keep everything
        self.graph_url = base + GRAPH_PATH
        self.lifecycle_url = base + GRAPH_LIFECYCLE_PATH
        self.bc_url = base + BC_PATH
        self._commands_topic = topic_name(settings, SYNC_COMMANDS)
        self._unsent: list[SyncCommand] = []  # sync commands the broker has not acked yet
        self._in_handler = False
        self._next_pass = 0.0  # monotonic

    # --- Graph, per user -----------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock()

    def _due(self, expiration: datetime, lifetime: timedelta) -> bool:
        return expiration - self._now() < lifetime * RENEW_WHEN_LEFT

    async def _create_graph(self, setup: UserSetup) -> Subscription:
        folder_id = await self.graph.find_or_create_folder(setup.mailbox, setup.folder_name)
        resource = f"users/{setup.mailbox}/contactFolders/{folder_id}/contacts"
        state = new_client_state()
        wanted = self._now() + self.graph_lifetime
        created = await self.graph.create_subscription(
            resource, self.graph_url, self.lifecycle_url, state, wanted)
        record = Subscription(str(created["id"]), SubscriptionService.GRAPH, resource, state,
                              _expiry(created, wanted), self.graph_url, user_id=setup.user_id)
        try:
            self.store.subscriptions.upsert(record)
        except Exception:
            # Unknown to the webhook, it would only ever be refused: take it back.
            await self.graph.delete_subscription(record.subscription_id)
            raise
        _log().info("graph subscription created", user_id=setup.user_id,
                    subscription_id=record.subscription_id,
                    expiration=record.expiration.isoformat())
        return record

    async def _replace(self, setup: UserSetup, gone: Sequence[Subscription],
                       report: KeeperReport) -> None:
        """`gone` no longer exists at Graph: make sure the user has another one, tell the
        applier to catch up, then forget `gone`. Safe to repeat after a failure part-way."""
        gone_ids = {s.subscription_id for s in gone}
        others = [s for s in self.store.subscriptions.list_all(
            service=SubscriptionService.GRAPH, user_id=setup.user_id)
            if s.subscription_id not in gone_ids]
        if not others:
            new = await self._create_graph(setup)
            report.recreated.append(new.subscription_id)
        self._publish_sync(setup.user_id, RECREATED_REASON)
        for s in gone:
            self.store.subscriptions.delete(s.subscription_id)
        _log().info("graph subscription recreated", user_id=setup.user_id, gone=sorted(gone_ids))

    async def _renew_graph(self, setup: UserSetup, sub: Subscription,
                           report: KeeperReport) -> None:
        wanted = self._now() + self.graph_lifetime
        try:
            renewed = await self.graph.renew_subscription(sub.subscription_id, wanted)
        except NotFound:
            await self._replace(setup, [sub], report)
            return
        self.store.subscriptions.upsert(
            dataclasses.replace(sub, expiration=_expiry(renewed, wanted)))
        report.renewed.append(sub.subscription_id)

    async def _delete_graph(self, sub: Subscription, report: KeeperReport) -> None:
        await self.graph.delete_subscription(sub.subscription_id)  # False: already gone
        self.store.subscriptions.delete(sub.subscription_id)
        report.deleted.append(sub.subscription_id)
        _log().info("graph subscription deleted", user_id=sub.user_id,
                    subscription_id=sub.subscription_id)

    async def _keep_user(self, setup: UserSetup, subs: list[Subscription],
                         live: set[str] | None, report: KeeperReport) -> None:
        subs = sorted(subs, key=lambda s: s.expiration, reverse=True)
        prefix = f"users/{setup.mailbox}/".lower()
        for s in [s for s in subs if not s.resource.lower().startswith(prefix)]:
            await self._delete_graph(s, report)  # the setup moved to another mailbox
            subs.remove(s)
        gone = [s for s in subs if live is not None and s.subscription_id not in live]
        present = [s for s in subs if s not in gone]
        if gone:
            await self._replace(setup, gone, report)
            if not present:
                return
        if not subs:
            new = await self._create_graph(setup)
            report.created.append(new.subscription_id)
            self._publish_sync(setup.user_id, CREATED_REASON)
            return
        keep, extra = present[0], present[1:]
        for s in extra:
            await self._delete_graph(s, report)
        if self._due(keep.expiration, self.graph_lifetime):
            await self._renew_graph(setup, keep, report)

    async def _keep_graph(self, report: KeeperReport) -> None:
        setups = {s.user_id: s for s in self.store.setups.list_all(enabled=True) if s.syncs}
        listing: dict[str, dict[str, Any]] | None
        try:
            listing = {str(s["id"]): s for s in await self.graph.list_subscriptions()}
        except ServiceError as exc:
            _log().warning("could not list Graph subscriptions; checking by renewal only",
                           error=str(exc))
            listing = None
        live = set(listing) if listing is not None else None
        stored = self.store.subscriptions.list_all(service=SubscriptionService.GRAPH)
        for sub in stored:
            if sub.user_id not in setups:  # disabled or removed
                try:
                    await self._delete_graph(sub, report)
                except ServiceError as exc:
                    report.failed[sub.user_id or sub.subscription_id] = str(exc)
        for setup in setups.values():
            mine = [s for s in stored if s.user_id == setup.user_id]
            try:
                await self._keep_user(setup, mine, live, report)
            except ServiceError as exc:
                report.failed[setup.user_id] = str(exc)
                _log().warning("could not keep the user's subscription", user_id=setup.user_id,
                               error=str(exc))
        if listing is not None:
            known = {s.subscription_id for s in
                     self.store.subscriptions.list_all(service=SubscriptionService.GRAPH)}
            known.update(report.deleted)  # deleted in this pass already
            for sid, entity in listing.items():
                if sid not in known and entity.get("notificationUrl") == self.graph_url:
                    try:
                        await self.graph.delete_subscription(sid)
                        report.deleted.append(sid)
                        _log().info("orphan graph subscription deleted", subscription_id=sid)
                    except ServiceError as exc:
                        report.failed[sid] = str(exc)

    # --- BC, per company -----------------------------------------------------------------

    async def _create_bc(self, bc: BcClient) -> Subscription:
        state = new_client_state()
        created = await bc.create_subscription(self.bc_url, state)
        record = Subscription(str(created["subscriptionId"]), SubscriptionService.BC,
                              str(created.get("resource") or bc.contacts_resource), state,
                              _expiry(created, self._now() + self.bc_lifetime), self.bc_url,
                              company=bc.company_id)
        try:
            self.store.subscriptions.upsert(record)
        except Exception:
            await bc.delete_subscription(record.subscription_id,
                                         str(created.get("@odata.etag") or "*"))
            raise
        _log().info("bc subscription created", company=bc.company_id,
                    subscription_id=record.subscription_id)
        return record

    async def _keep_bc(self, bc: BcClient, report: KeeperReport) -> None:
        company = bc.company_id
        if not await bc.webhook_supported():
            return  # the change feed polls faster instead
        listing = {str(s.get("subscriptionId")): s for s in await bc.list_subscriptions()}
        stored = sorted(self.store.subscriptions.list_all(service=SubscriptionService.BC,
                                                          company=company),
                        key=lambda s: s.expiration, reverse=True)
        present = []
        for sub in stored:
            if sub.subscription_id in listing:
                present.append(sub)
            else:  # deleted by BC (failed deliveries) or expired: a new one below
                self.store.subscriptions.delete(sub.subscription_id)
                _log().info("bc subscription gone", company=company,
                            subscription_id=sub.subscription_id)
        for sub in present[1:]:
            etag = str(listing[sub.subscription_id].get("@odata.etag") or "*")
            await bc.delete_subscription(sub.subscription_id, etag)
            self.store.subscriptions.delete(sub.subscription_id)
            report.deleted.append(sub.subscription_id)
        keep = present[0] if present else None
        if keep is not None and self._due(keep.expiration, self.bc_lifetime):
            etag = str(listing[keep.subscription_id].get("@odata.etag") or "*")
            try:
                renewed = await bc.renew_subscription(
                    keep.subscription_id, etag, notification_url=keep.notification_url,
                    resource=keep.resource, client_state=keep.client_state)
            except NotFound:
                self.store.subscriptions.delete(keep.subscription_id)
                keep = None
            else:
                self.store.subscriptions.upsert(dataclasses.replace(
                    keep, expiration=_expiry(renewed, self._now() + self.bc_lifetime)))
                report.renewed.append(keep.subscription_id)
        if keep is None:
            new = await self._create_bc(bc)
            (report.recreated if stored else report.created).append(new.subscription_id)
        known = {s.subscription_id for s in self.store.subscriptions.list_all(
            service=SubscriptionService.BC)} | set(report.deleted)
        for sid, entity in listing.items():
            if sid not in known and entity.get("notificationUrl") == self.bc_url:
                await bc.delete_subscription(sid, str(entity.get("@odata.etag") or "*"))
                report.deleted.append(sid)
                _log().info("orphan bc subscription deleted", subscription_id=sid)

    # --- the passes ----------------------------------------------------------------------

    async def run_once(self) -> KeeperReport:
        """One pass over every user and the company: create, renew, recreate, delete."""
        report = KeeperReport()
        self._flush_unsent()
        await self._keep_graph(report)
        if self.bc is not None:
            try:
                await self._keep_bc(self.bc, report)
            except ServiceError as exc:
                report.failed[self.bc.company_id] = str(exc)
                _log().warning("could not keep the BC subscription", error=str(exc))
        self._export_expiry()
        _log().info("subscriptions kept", created=len(report.created),
                    recreated=len(report.recreated), renewed=len(report.renewed),
                    deleted=len(report.deleted), failed=len(report.failed))
        return report

    def _export_expiry(self) -> None:
        """Each user's (and the company's) latest expiry as a series; deleted ones disappear."""
        latest: dict[tuple[str, str], datetime] = {}
        for sub in self.store.subscriptions.list_all():
            key = (sub.service.value, metrics.user_label(sub.user_id or ""))
            latest[key] = max(latest.get(key, sub.expiration), sub.expiration)
        metrics.SUBSCRIPTION_EXPIRY.clear()
        for (service, user), expiration in latest.items():
            metrics.SUBSCRIPTION_EXPIRY.labels(service, user).set(expiration.timestamp())

    async def handle_lifecycle(self, event: GraphLifecycle) -> KeeperReport:
        """Act on one lifecycle event. Events for subscriptions no longer stored (already
        replaced: a redelivery) are ignored, so handling is idempotent."""
        report = KeeperReport()
        self._flush_unsent()
        sub = self.store.subscriptions.get(event.subscription_id)
        if sub is None or sub.service is not SubscriptionService.GRAPH or event.event is \
                LifecycleEvent.MISSED:
            return report
        setup = self.store.setups.get(sub.user_id or "")
        if setup is None or not setup.syncs:
            await self._delete_graph(sub, report)
            return report
        if event.event is LifecycleEvent.SUBSCRIPTION_REMOVED:
            await self._replace(setup, [sub], report)
        elif event.event is LifecycleEvent.REAUTHORIZATION_REQUIRED:
            await self._renew_graph(setup, sub, report)
        return report

    # --- publishing ----------------------------------------------------------------------

    def _publish_sync(self, user_id: str, reason: str) -> None:
        self._unsent.append(SyncCommand(user_id=user_id, kind=CommandKind.SYNC, reason=reason))
        self._flush_unsent()

    def _flush_unsent(self) -> None:
        """Publish the queued sync commands; each stays queued until the broker acked it.
        Inside the worker's handler the worker publishes them (`handle` returns them)."""
        if not self._unsent or self._in_handler:
            return
        unsent = list(self._unsent)
        Publisher(self.producer).publish(
            [Outgoing(self._commands_topic, c.user_id, c) for c in unsent])
        for command in unsent:
            self._unsent.remove(command)

    # --- the role ------------------------------------------------------------------------

    def handle(self, records: Sequence[WorkRecord]) -> Publish | None:
        """The Worker's handler: lifecycle events only (change notifications are the
        router's); returns the sync commands its re-creations queued."""
        self._in_handler = True
        try:
            for record in records:
                if isinstance(record.payload, GraphLifecycle):
                    self.bridge.run(self.handle_lifecycle(record.payload))
        finally:
            self._in_handler = False
        unsent = list(self._unsent)
        if not unsent:
            return None

        def acked() -> None:
            self._unsent = [c for c in self._unsent if c not in unsent]

        return Publish([Outgoing(self._commands_topic, c.user_id, c) for c in unsent],
                       then=acked)

    def _pass_if_due(self) -> None:
        """Between polls: a pass every `interval` seconds (the first at once)."""
        if time.monotonic() < self._next_pass:
            return
        failed = True
        try:
            failed = bool(self.bridge.run(self.run_once()).failed)
        except Exception as exc:  # the store or the broker away: next pass
            _log().warning("subscription pass failed", error=str(exc))
        self._failed_passes = self._failed_passes + 1 if failed else 0
        self._next_pass = time.monotonic() + self._until_next_pass()

    def _until_next_pass(self) -> float:
        """The interval; after failed passes the project's backoff from `failed_pass_retry`,
        doubling up to the interval (no jitter: one keeper per deployment, no herd)."""
        if not self._failed_passes:
            return self.interval
        policy = RetryPolicy(base_delay=self.failed_pass_retry, max_delay=self.interval,
                             jitter=0.0)
        # Capped exponent: a BC refusing subscriptions for good fails every pass, forever.
        return backoff_delay(policy, min(self._failed_passes - 1, 16), 0.0)

    def _act_on_lifecycle(self, event: GraphLifecycle) -> KeeperReport:
        return self.bridge.run(self.handle_lifecycle(event))

    def build_worker(self, *, retry: RetryPolicy | None = None, **consumer_overrides: Any
                     ) -> Worker:
        return build_worker(self.settings, GROUP_ID, (GRAPH_LIFECYCLE,), self.handle,
                            retry=retry, **consumer_overrides)

    def run(self, stop: threading.Event, worker: Worker | None = None) -> None:
        """A pass every `interval` seconds (the first at once), lifecycle events in between,
        until `stop` is set."""
        drain_old_lifecycle(self.settings, GROUP_ID, self._act_on_lifecycle)
        worker = worker or self.build_worker()
        self._next_pass = time.monotonic()
        try:
            worker.run(stop, between=self._pass_if_due)
        finally:
            worker.close()
            self.close()

    def close(self) -> None:
        self.bridge.close()  # a loop it was given stays open


def run_subscriptions(
    settings: Settings,
    store: Store,
    stop: threading.Event,
    *,
    interval: float = DEFAULT_INTERVAL,
) -> None:
    """The `subscriptions` role against the configured tenant, until `stop` is set."""
    bridge = Bridge()
    producer = make_producer(settings, client_id="contactsync-subscriptions")
    try:
        def enter() -> tuple[Any, Services]:
            cm = open_services(settings, store)
            return cm, bridge.run(cm.__aenter__())

        opened = when_credential_works(enter, stop)
        if opened is None:
            return
        services_cm, services = opened
        try:
            SubscriptionKeeper(settings, store, services.graph, services.bc, producer,
                               loop=bridge.loop, interval=interval).run(stop)
        finally:
            bridge.run(services_cm.__aexit__(None, None, None))
    finally:
        try:
            bridge.close()
        finally:
            producer.close(timeout=10)
