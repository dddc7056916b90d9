"""Webhook subscriptions we hold at Graph and BC. client_state is a secret: never logged."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from contactsync.store.base import Repository, upsert_statement, utcnow
from contactsync.store.records import Subscription, SubscriptionService
from contactsync.store.tables import subscriptions

_COLUMNS = (
    subscriptions.c.subscription_id,
    subscriptions.c.service,
    subscriptions.c.resource,
    subscriptions.c.client_state,
    subscriptions.c.expiration,
    subscriptions.c.notification_url,
    subscriptions.c.user_id,
    subscriptions.c.company,
    subscriptions.c.updated_at,
)
_NAMES = [column.name for column in _COLUMNS]


def _from_row(row: Sequence[Any]) -> Subscription:
    values = dict(zip(_NAMES, row, strict=True))
    values["service"] = SubscriptionService(values["service"])
    return Subscription(**values)


class SubscriptionRepository(Repository):
    def get(self, subscription_id: str) -> Subscription | None:
        query = select(*_COLUMNS).where(subscriptions.c.subscription_id == subscription_id)
        with self._reading() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _from_row(row)

    def list_all(
        self,
        *,
        service: SubscriptionService | None = None,
        user_id: str | None = None,
        company: str | None = None,
        expiring_before: datetime | None = None,
    ) -> list[Subscription]:
        """Subscriptions matching every filter given, soonest expiring first."""
        query = select(*_COLUMNS).order_by(
            subscriptions.c.expiration, subscriptions.c.subscription_id
        )
        if service is not None:
            query = query.where(subscriptions.c.service == service.value)
        if user_id is not None:
            query = query.where(subscriptions.c.user_id == user_id)
        if company is not None:
            query = query.where(subscriptions.c.company == company)
        if expiring_before is not None:
            query = query.where(subscriptions.c.expiration < expiring_before)
        with self._reading() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def upsert(self, subscription: Subscription) -> Subscription:
        """Insert or replace by subscription id; the store stamps updated_at."""
        stored = dataclasses.replace(subscription, updated_at=utcnow())
        values = dataclasses.asdict(stored)
        values["service"] = stored.service.value
        with self._writing() as conn:
            update = [name for name in values if name != "subscription_id"]
            stmt = upsert_statement(conn, subscriptions, [subscriptions.c.subscription_id], update)
            conn.execute(stmt.values(values))
        return stored

    def delete(self, subscription_id: str) -> bool:
        with self._writing() as conn:
            result = conn.execute(
                subscriptions.delete().where(subscriptions.c.subscription_id == subscription_id)
            )
        return result.rowcount == 1
