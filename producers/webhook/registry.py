"""Which subscriptions are ours: the webhook's view of the subscription store, cached briefly.

The webhook only needs one question answered per notification: "is this subscription ours, for
which service and owner, and what clientState must it carry?". `SubscriptionRegistry` is that
question; `StoreRegistry` answers it from `contactsync.store`; `CachedRegistry` keeps answers
for a few seconds so the hot path does not touch the database on every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from contactsync.store import Store

Service = Literal["graph", "bc"]


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    subscription_id: str
    service: Service
    owner_id: str  # Graph: our user id; BC: the company id
    client_state: str = field(repr=False)  # a shared secret: kept out of repr and logs


class SubscriptionRegistry(Protocol):
    def lookup(self, subscription_id: str) -> SubscriptionInfo | None:
        """The subscription, or None when it is not one of ours. May raise when unavailable."""
        ...


class RegistryUnavailable(Exception):
    """The registry could not answer (database down): the sender must retry, not be refused."""


class StoreRegistry:
    """Adapter from the state store's subscriptions table (contactsync.store)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def lookup(self, subscription_id: str) -> SubscriptionInfo | None:
        row = self._store.subscriptions.get(subscription_id)
        if row is None:
            return None
        service: Service = "graph" if row.service.value == "graph" else "bc"
        owner = (row.user_id if service == "graph" else row.company) or ""
        return SubscriptionInfo(row.subscription_id, service, owner, row.client_state)


class CachedRegistry:
    """A TTL cache in front of a registry; misses are looked up off the event loop.

    Negative answers are kept much shorter than positive ones: a subscription created a moment
    ago must be recognised soon, while a flood of forged ids still cannot hammer the database.
    """

    def __init__(
        self,
        registry: SubscriptionRegistry,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 2.0,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, SubscriptionInfo | None]] = {}

    async def lookup(self, subscription_id: str) -> SubscriptionInfo | None:
        now = self._clock()
        hit = self._entries.get(subscription_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            info = await asyncio.to_thread(self._registry.lookup, subscription_id)
        except Exception as exc:
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # crude but bounded; refills from the registry in seconds
        ttl = self._ttl if info is not None else self._negative_ttl
        self._entries[subscription_id] = (self._clock() + ttl, info)
        return info

    def invalidate(self, subscription_id: str | None = None) -> None:
        if subscription_id is None:
            self._entries.clear()
        else:
            self._entries.pop(subscription_id, None)
