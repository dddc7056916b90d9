"""Which items of a body are accepted, and the messages they become.

An item is accepted only when its subscription is ours, for the service of the route, and it
carries that subscription's clientState (compared in constant time). Everything else is refused
with a reason (a metric label; never the value). Accepted items become envelopes:

    Graph change     -> graph.notifications, key subscription id, GraphNotification
    Graph lifecycle  -> graph.lifecycle,     key subscription id, GraphLifecycle
    BC               -> bc.notifications,    key company id,      BcNotification
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from contactsync import tracing
from contactsync.producers.webhook.parsing import BcItem, GraphChangeItem, GraphLifecycleItem
from contactsync.producers.webhook.publisher import OutgoingMessage
from contactsync.producers.webhook.registry import CachedRegistry, Service, SubscriptionInfo
from contactsync.schemas.envelope import encode, wrap
from contactsync.schemas.messages import BcNotification, GraphLifecycle, GraphNotification

UNKNOWN_SUBSCRIPTION = "unknown_subscription"
WRONG_SERVICE = "wrong_service"
CLIENT_STATE_MISMATCH = "client_state_mismatch"


def refusal_reason(
    info: SubscriptionInfo | None, service: Service, presented: str | None
) -> str | None:
    """None when the item may be published, else why not."""
    if info is None:
        return UNKNOWN_SUBSCRIPTION
    if info.service != service:
        return WRONG_SERVICE
    # A subscription stored without a secret cannot authenticate anything: refuse.
    if not info.client_state or presented is None:
        return CLIENT_STATE_MISMATCH
    if not hmac.compare_digest(info.client_state.encode(), presented.encode()):
        return CLIENT_STATE_MISMATCH
    return None


@dataclass
class Intake:
    messages: list[OutgoingMessage] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    # Subscription ids refused, for the log line (ids are not secrets).
    refused_ids: set[str] = field(default_factory=set)

    def refuse(self, reason: str, subscription_id: str) -> None:
        self.refused[reason] += 1
        self.refused_ids.add(subscription_id)


async def _lookup_all(
    registry: CachedRegistry, ids: Iterable[str]
) -> dict[str, SubscriptionInfo | None]:
    return {sid: await registry.lookup(sid) for sid in dict.fromkeys(ids)}


Item = TypeVar("Item", GraphChangeItem | GraphLifecycleItem, BcItem)
Payload = GraphNotification | GraphLifecycle | BcNotification


async def _intake(
    items: Sequence[Item],
    registry: CachedRegistry,
    service: Service,
    topic_of: Callable[[Payload], str],
    trace_id: str,
    build: Callable[[Item, SubscriptionInfo], tuple[Payload, str]],
) -> Intake:
    """Check every item against its subscription; accepted ones become (payload, key), sent
    to the topic `topic_of` names for the payload."""
    known = await _lookup_all(registry, (item.subscription_id for item in items))
    intake = Intake()
    for item in items:
        info = known[item.subscription_id]
        reason = refusal_reason(info, service, item.client_state)
        if reason is not None or info is None:
            intake.refuse(reason or UNKNOWN_SUBSCRIPTION, item.subscription_id)
            continue
        payload, key = build(item, info)
        value = encode(wrap(payload, trace_id=trace_id))
        intake.messages.append(OutgoingMessage(topic_of(payload), key.encode(), value,
                                               tuple(tracing.headers())))
    return intake


async def graph_intake(
    items: Sequence[GraphChangeItem | GraphLifecycleItem],
    registry: CachedRegistry,
    topic: str,
    lifecycle_topic: str,
    received_at: datetime,
    trace_id: str,
) -> Intake:
    """Change items to `topic`, lifecycle items to `lifecycle_topic`: the subscription keeper
    reads only the few lifecycle events, not every change."""

    def topic_of(payload: Payload) -> str:
        return lifecycle_topic if isinstance(payload, GraphLifecycle) else topic

    def build(
        item: GraphChangeItem | GraphLifecycleItem, info: SubscriptionInfo
    ) -> tuple[Payload, str]:
        if isinstance(item, GraphLifecycleItem):
            return GraphLifecycle(
                subscription_id=item.subscription_id,
                user_id=info.owner_id,
                event=item.lifecycle_event,
                received_at=received_at,
            ), item.subscription_id
        data = item.resource_data
        return GraphNotification(
            subscription_id=item.subscription_id,
            user_id=info.owner_id,
            change_type=item.change_type,
            resource=item.resource,
            contact_id=data.id if data else "",
            etag=data.etag if data else "",
            received_at=received_at,
        ), item.subscription_id

    return await _intake(items, registry, "graph", topic_of, trace_id, build)


async def bc_intake(
    items: Sequence[BcItem],
    registry: CachedRegistry,
    topic: str,
    received_at: datetime,
    trace_id: str,
) -> Intake:
    def build(item: BcItem, info: SubscriptionInfo) -> tuple[Payload, str]:
        # Keyed by company: one company's hints stay in order (schemas/messages.py table).
        return BcNotification(
            subscription_id=item.subscription_id,
            company_id=info.owner_id,
            change_type=item.change_type,
            resource=item.resource,
            last_modified=item.last_modified,
            received_at=received_at,
        ), info.owner_id or item.subscription_id

    return await _intake(items, registry, "bc", lambda _: topic, trace_id, build)
