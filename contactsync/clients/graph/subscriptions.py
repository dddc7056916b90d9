"""Graph's change-notification subscriptions: create, renew, delete, list.

Subscriptions are budgeted per app and tenant (`SUBSCRIPTION_LIMITS`), not per mailbox.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import cast

from kiota_abstractions.method import Method

from contactsync.clients.errors import Invalid, NotFound
from contactsync.clients.graph.transport import GraphTransport, Json, _q

_MAX_MINUTES = re.compile(r"can only be (\d+) minutes in the future", re.I)


class SubscriptionsApi(GraphTransport):
    async def create_subscription(
        self,
        resource: str,
        notification_url: str,
        lifecycle_url: str | None,
        client_state: str,
        expiration: datetime,
        change_type: str = "created,updated,deleted",
    ) -> Json:
        """Create a basic-notification subscription. If Graph says the expiration is too far
        ("can only be N minutes in the future", reference 3.2) it is retried once within N."""
        body: Json = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "resource": resource,
            "clientState": client_state,
            "expirationDateTime": _iso(expiration),
        }
        if lifecycle_url:
            body["lifecycleNotificationUrl"] = lifecycle_url
        async def post(when: datetime) -> Json:
            payload = body | {"expirationDateTime": _iso(when)}
            resp = await self._send(
                "subscriptions",
                lambda: self._request(Method.POST, "/subscriptions", body=payload),
                idempotent=False,
                subscriptions=True,
            )
            return cast(Json, resp.body)

        return await _within_graphs_limit(post, expiration)

    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> Json:
        path = f"/subscriptions/{_q(subscription_id)}"

        async def patch(when: datetime) -> Json:
            resp = await self._send(
                "subscriptions",
                lambda: self._request(Method.PATCH, path,
                                      body={"expirationDateTime": _iso(when)}),
                subscriptions=True,
            )
            return cast(Json, resp.body)

        return await _within_graphs_limit(patch, expiration)

    async def delete_subscription(self, subscription_id: str) -> bool:
        path = f"/subscriptions/{_q(subscription_id)}"
        try:
            await self._send("subscriptions", lambda: self._request(Method.DELETE, path),
                             subscriptions=True)
        except NotFound:
            return False
        return True

    async def list_subscriptions(self) -> list[Json]:
        return await self._get_pages("subscriptions",
                                     self._request(Method.GET, "/subscriptions"),
                                     subscriptions=True)


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _within_graphs_limit(send: Callable[[datetime], Awaitable[Json]],
                               expiration: datetime) -> Json:
    """`send(expiration)`; if Graph says it is too far ahead, once more within its limit."""
    try:
        return await send(expiration)
    except Invalid as err:
        shorter = _within_limit(err, expiration)
        if shorter is None:
            raise
        return await send(shorter)


def _within_limit(err: Invalid, wanted: datetime) -> datetime | None:
    m = _MAX_MINUTES.search(str(err))
    if err.code != "ExtensionError" or not m:
        return None
    limit = datetime.now(UTC) + timedelta(minutes=int(m.group(1)) - 5)
    return limit if limit < wanted else None


def new_client_state() -> str:
    """A random clientState to check notifications against: 48 random bytes, 64 characters
    (Graph allows 128)."""
    return secrets.token_urlsafe(48)
