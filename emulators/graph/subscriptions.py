"""Subscriptions, the validation handshake and the notification delivery worker (reference 3).

Notifications are basic (no resource data): they say *that* a contact changed. The worker
collects what is queued for a short window, POSTs it per notification URL in one
`changeNotificationCollection`, and retries a POST that is not answered 2xx in time with
exponential backoff (`delivery_backoff_base_seconds * 2**attempt`; Graph's real schedule is
unpublished), then drops it. Admin faults can drop or duplicate the next notifications.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .config import GraphEmulatorConfig
from .model import GraphError, id_in_form, invalid, new_guid, not_found
from .state import Change, GraphState

log = logging.getLogger(__name__)

CHANGE_TYPES = {"created", "updated", "deleted"}
LIFECYCLE_EVENTS = {"missed", "subscriptionRemoved", "reauthorizationRequired"}
_FOLDER_RES = re.compile(r"^/?(?:users|me)/([^/]+)/contactFolders/([^/]+)/contacts$", re.I)
_MAILBOX_RES = re.compile(r"^/?users/([^/]+)/contacts$", re.I)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}0000Z"


def _parse_dt(value: Any) -> datetime:
    if not isinstance(value, str):
        raise invalid("expirationDateTime is required.", "InvalidRequest")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid(f"Invalid expirationDateTime '{value}'.", "InvalidRequest") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass
class Subscription:
    id: str
    resource: str
    change_types: set[str]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    user_id: str
    folder_id: str | None  # None: every contact of the mailbox
    immutable_ids: bool = False  # created with Prefer: IdType="ImmutableId"

    def to_json(self, base: str) -> dict[str, Any]:
        return {
            "@odata.context": f"{base}/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": "00000000-0000-0000-0000-00000000e4a1",
            "changeType": ",".join(
                t for t in ("created", "updated", "deleted") if t in self.change_types
            ),
            "clientState": None,  # Graph never returns it
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _iso(self.expiration),
            "creatorId": self.user_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            # Read-only; application/json is the default ("subscription resource type").
            "notificationContentType": "application/json",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }

    def snapshot(self) -> dict[str, Any]:
        return self.to_json("") | {
            "clientState": self.client_state,
            "userId": self.user_id,
            "folderId": self.folder_id,
        }


@dataclass
class DeliveryStats:
    posts: int = 0
    delivered: int = 0  # notifications in POSTs answered 2xx
    failed_attempts: int = 0
    given_up: int = 0
    dropped_by_fault: int = 0
    duplicated_by_fault: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)  # last delivered items (bounded)


class Notifier:
    """Queue + worker task. `run()` is started in the app's lifespan."""

    def __init__(self, config: GraphEmulatorConfig) -> None:
        self.config = config
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.stats = DeliveryStats()
        self.drop_next = 0
        self.duplicate_next = 0
        self.client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def enqueue(self, url: str, item: dict[str, Any]) -> None:
        if self.drop_next > 0:
            self.drop_next -= 1
            self.stats.dropped_by_fault += 1
            return
        self.queue.put_nowait((url, item))
        if self.duplicate_next > 0:
            self.duplicate_next -= 1
            self.stats.duplicated_by_fault += 1
            self.queue.put_nowait((url, dict(item)))

    async def run(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.config.delivery_timeout_seconds)
        try:
            while True:
                first = await self.queue.get()
                await asyncio.sleep(self.config.delivery_batch_window_seconds)  # batch a little
                groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
                groups[first[0]].append(first[1])
                while not self.queue.empty():
                    url, item = self.queue.get_nowait()
                    groups[url].append(item)
                for url, items in groups.items():
                    step = self.config.delivery_max_batch
                    for i in range(0, len(items), step):
                        self._spawn(self._post(url, items[i : i + step], 0))
        finally:
            for t in list(self._tasks):
                t.cancel()
            await self.client.aclose()
            self.client = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, items: list[dict[str, Any]], attempt: int) -> None:
        assert self.client is not None
        self.stats.posts += 1
        ok = False
        try:
            resp = await self.client.post(url, json={"value": items})
            ok = 200 <= resp.status_code < 300
        except httpx.HTTPError:
            ok = False
        if ok:
            self.stats.delivered += len(items)
            self.stats.log.extend(items)
            del self.stats.log[:-1000]
            return
        self.stats.failed_attempts += 1
        if attempt + 1 >= self.config.delivery_max_attempts:
            self.stats.given_up += len(items)
            log.info("giving up on %d notifications to %s", len(items), url)
            return
        await asyncio.sleep(self.config.delivery_backoff_base_seconds * 2**attempt)
        await self._post(url, items, attempt + 1)


class SubscriptionStore:
    def __init__(self, config: GraphEmulatorConfig, state: GraphState, notifier: Notifier):
        self.config = config
        self.state = state
        self.notifier = notifier
        self.subs: dict[str, Subscription] = {}
        self._by_user: dict[str, set[str]] = defaultdict(set)
        state.listeners.append(self.on_change)

    # ---- CRUD --------------------------------------------------------------------------------
    def get(self, sub_id: str) -> Subscription:
        sub = self.subs.get(sub_id)
        if sub is None or sub.expiration <= datetime.now(UTC):
            if sub is not None:
                self.remove(sub_id)
            raise GraphError(404, "ResourceNotFound", f"The object was not found: {sub_id}")
        return sub

    def remove(self, sub_id: str) -> Subscription | None:
        sub = self.subs.pop(sub_id, None)
        if sub is not None:
            self._by_user[sub.user_id].discard(sub_id)
        return sub

    def _expiration(self, value: Any) -> datetime:
        exp = _parse_dt(value)
        now = datetime.now(UTC)
        max_min = self.config.subscription_max_minutes
        if exp > now + timedelta(minutes=max_min):
            raise invalid(
                f"Subscription expiration can only be {max_min} minutes in the future.",
                "ExtensionError",
            )
        if exp <= now:
            raise invalid("Subscription expiration must be in the future.", "InvalidRequest")
        # Values under the minimum are raised to it (reference 3.2).
        return max(exp, now + timedelta(minutes=self.config.subscription_min_minutes))

    def _check_url(self, name: str, url: Any) -> str:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise invalid(f"{name} must be an absolute URL.", "InvalidRequest")
        # "Create subscription" (learn.microsoft.com/graph/api/subscription-post-subscriptions)
        # and "Receive change notifications through webhooks" (learn.microsoft.com/graph/
        # change-notifications-delivery-webhooks): the URL must use HTTPS. Graph's answer to an
        # http one, as reported (microsoft-graph-docs-contrib issue 7821): 400 InvalidRequest
        # "NotificationUrl scheme='http' is not supported." Local receivers are http, hence
        # the switch (`contactsync emulate --allow-http-notifications`).
        if not self.config.allow_http_notifications and not url.lower().startswith("https://"):
            scheme = url.split(":", 1)[0].lower()
            label = "NotificationUrl" if name == "notificationUrl" else "LifecycleNotificationUrl"
            raise invalid(f"{label} scheme='{scheme}' is not supported.", "InvalidRequest")
        return url

    async def create(self, body: Any, immutable_ids: bool = False) -> Subscription:
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", "BadRequest")
        types = {t.strip() for t in str(body.get("changeType") or "").split(",") if t.strip()}
        if not types or not types <= CHANGE_TYPES:
            raise invalid(f"Invalid changeType '{body.get('changeType')}'.", "InvalidRequest")
        url = self._check_url("notificationUrl", body.get("notificationUrl"))
        lifecycle = body.get("lifecycleNotificationUrl")
        if lifecycle is not None:
            lifecycle = self._check_url("lifecycleNotificationUrl", lifecycle)
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > 128
        ):
            raise invalid(
                "clientState must be a string of at most 128 characters.", "InvalidRequest"
            )
        resource = str(body.get("resource") or "")
        user_id, folder_id = self._resolve_resource(resource)
        expiration = self._expiration(body.get("expirationDateTime"))
        if len(self._by_user[user_id]) >= self.config.subscriptions_per_mailbox:
            # Status for this limit is UNCONFIRMED; 403 as Graph uses for quota refusals.
            raise GraphError(
                403, "ExtensionError", "The mailbox has reached its subscription limit."
            )
        for target in dict.fromkeys([url, lifecycle]):  # each distinct URL once (reference 3.1)
            if target is not None:
                await self._validate(target)
        sub = Subscription(
            new_guid(),
            resource,
            types,
            url,
            lifecycle,
            client_state,
            expiration,
            user_id,
            folder_id,
            immutable_ids,
        )
        self.subs[sub.id] = sub
        self._by_user[user_id].add(sub.id)
        return sub

    def _resolve_resource(self, resource: str) -> tuple[str, str | None]:
        if m := _FOLDER_RES.match(resource):
            user = self.state.user(m.group(1))
            folder = self.state.folder(user, m.group(2))
            return user.id, folder.id
        if m := _MAILBOX_RES.match(resource):
            return self.state.user(m.group(1)).id, None
        raise invalid(f"Resource '{resource}' is not supported.", "ExtensionError")

    async def _validate(self, url: str) -> None:
        token = (
            "Validation: Testing client application reachability for subscription Request-Id: "
            + new_guid()
        )
        sep = "&" if "?" in url else "?"
        try:
            async with httpx.AsyncClient(timeout=self.config.validation_timeout_seconds) as client:
                resp = await client.post(
                    url + sep + httpx.QueryParams({"validationToken": token}).__str__(),
                    content=b"",
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                )
            ok = resp.status_code == 200 and resp.text == token
        except httpx.HTTPError:
            ok = False
        if not ok:
            raise invalid(
                "Subscription validation request failed. Response must exactly match "
                "validationToken query parameter.",
                "ValidationError",
            )

    def renew(self, sub_id: str, body: Any) -> Subscription:
        sub = self.get(sub_id)
        if not isinstance(body, dict) or "expirationDateTime" not in body:
            raise invalid("expirationDateTime is required.", "InvalidRequest")
        sub.expiration = self._expiration(body["expirationDateTime"])
        return sub

    def list_for(self) -> list[Subscription]:
        now = datetime.now(UTC)
        return [s for s in self.subs.values() if s.expiration > now]

    # ---- notifications -----------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        ids = self._by_user.get(change.user_id)
        if not ids:
            return
        now = datetime.now(UTC)
        for sub_id in list(ids):
            sub = self.subs[sub_id]
            if sub.expiration <= now:
                self.remove(sub_id)  # Graph deletes subscriptions that were not renewed
                continue
            if change.change_type not in sub.change_types:
                continue
            if sub.folder_id is not None and sub.folder_id != change.folder_id:
                continue
            contact_id = id_in_form(change.contact_id, sub.immutable_ids)
            res = f"Users/{change.user_id}/Contacts/{contact_id}"
            self.notifier.enqueue(
                sub.notification_url,
                {
                    # changeNotification "id" (optional, present in the documented example of
                    # learn.microsoft.com/graph/change-notifications-delivery-webhooks)
                    "id": new_guid(),
                    "subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": _iso(sub.expiration),
                    "changeType": change.change_type,
                    "resource": res,
                    "resourceData": {
                        "@odata.type": "#Microsoft.Graph.Contact",
                        "@odata.id": res,
                        "@odata.etag": change.etag,
                        "id": contact_id,
                    },
                    "clientState": sub.client_state,
                    "tenantId": self.config.tenant_id,
                },
            )

    def lifecycle(self, sub_id: str, event: str) -> bool:
        """Send a lifecycle event; `subscriptionRemoved` also removes the subscription."""
        if event not in LIFECYCLE_EVENTS:
            raise invalid(f"Unknown lifecycle event '{event}'.")
        sub = self.subs.get(sub_id)
        if sub is None:
            raise not_found(f"No subscription {sub_id}.")
        if event == "subscriptionRemoved":
            self.remove(sub_id)
        if sub.lifecycle_url is None:
            return False
        self.notifier.enqueue(
            sub.lifecycle_url,
            {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": _iso(sub.expiration),
                "tenantId": self.config.tenant_id,
                "clientState": sub.client_state,
                "lifecycleEvent": event,
            },
        )
        return True

    def clear(self) -> None:
        self.subs.clear()
        self._by_user.clear()
