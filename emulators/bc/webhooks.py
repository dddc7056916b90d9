"""BC API webhooks (reference c.4): subscriptions, the validationToken handshake, and batched
notification delivery with BC's retry and deletion rules.

How delivery works, as BC's job queue does it:
* A change to a contact is recorded only if some subscription covers that company's contacts.
* The first change opens a window of `notification_delay_seconds` (30 s in BC). When it closes,
  every change recorded in it is sent: one item per changed record (several edits to one
  record become one item), or a single `collection` item whose `resource` carries
  `$filter=lastModifiedDateTime gt <earliest change - 50 ms>` when more than
  `max_notifications` (1,000) records changed.
* Items for all subscriptions that share a notificationUrl go in one POST.
* 408, 429, 5xx or no answer: retried after BC's gaps (60, 60, 60, 600, 6,000 s; scaled by
  `retry_delay_scale`); after `max_delivery_attempts` failures the subscriptions are deleted.
  Any other non-2xx answer deletes them at once.

Changes arrive from any thread (tests act through Python helpers); the delivery task runs on
the server's event loop and polls for due work every `delivery_poll_seconds`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from contactsync.emulators.bc.config import BcEmulatorConfig
from contactsync.emulators.bc.errors import ODataError
from contactsync.emulators.bc.state import format_ms

log = logging.getLogger(__name__)

MAX_DELIVERY_ATTEMPTS = 5
_RESOURCE = re.compile(r"companies\(([^)]+)\)/contacts/?$", re.IGNORECASE)


def parse_contacts_resource(resource: str) -> str | None:
    """Company id from `/api/v2.0/companies({id})/contacts` (relative or absolute), or None."""
    path = resource.split("?", 1)[0].strip()
    m = _RESOURCE.search(path)
    return m.group(1).strip("'{}").lower() if m else None


@dataclass
class Subscription:
    subscription_id: str
    notification_url: str
    resource: str
    company_id: str
    client_state: str
    user_id: str
    expiration_ms: int
    created_ms: int
    modified_ms: int
    rowversion: int
    failed_attempts: int = 0

    @property
    def etag(self) -> str:
        raw = f"'20;{self.subscription_id};{self.rowversion};'"
        return 'W/"' + base64.b64encode(raw.encode()).decode() + '"'

    def entity(self) -> dict[str, Any]:
        return {
            "@odata.etag": self.etag,
            "subscriptionId": self.subscription_id,
            "notificationUrl": self.notification_url,
            "resource": self.resource,
            "timestamp": self.rowversion,
            "userId": self.user_id,
            "lastModifiedDateTime": format_ms(self.modified_ms),
            "clientState": self.client_state,
            "expirationDateTime": format_ms(self.expiration_ms),
            "systemCreatedAt": format_ms(self.created_ms),
            "systemCreatedBy": self.user_id,
            "systemModifiedAt": format_ms(self.modified_ms),
            "systemModifiedBy": self.user_id,
        }


@dataclass
class _Change:
    contact_id: str
    change: str
    ms: int


@dataclass
class _Window:
    opened: float  # monotonic
    changes: list[_Change] = field(default_factory=list)


@dataclass
class _Delivery:
    url: str
    items: list[dict[str, Any]]
    subscription_ids: list[str]
    due: float
    attempt: int = 0  # failed attempts so far


def _now_ms() -> int:
    return int(time.time() * 1000)


class WebhookHub:
    def __init__(self, config: BcEmulatorConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.subscriptions: dict[str, Subscription] = {}
        self._windows: dict[str, _Window] = {}
        self._outbox: list[_Delivery] = []
        self._rowversion = 0
        self.drop_next = 0
        self.duplicate_next = 0
        self.history: list[dict[str, Any]] = []  # what was sent, for tests and the admin API
        self._client: httpx.AsyncClient | None = None
        self._wake = threading.Event()

    # -- change capture (any thread) -------------------------------------------------------

    def on_change(self, company_id: str, contact_id: str, change: str, ms: int) -> None:
        with self.lock:
            if not any(s.company_id == company_id for s in self.subscriptions.values()):
                return  # BC records changes only for entities somebody subscribed to
            window = self._windows.get(company_id)
            if window is None:
                window = self._windows[company_id] = _Window(opened=time.monotonic())
            window.changes.append(_Change(contact_id, change, ms))

    # -- subscriptions ---------------------------------------------------------------------

    def _next_rowversion(self) -> int:
        self._rowversion += 1
        return self._rowversion

    async def _handshake(self, url: str) -> None:
        """POST `url?validationToken=...`; the receiver must answer 200 with the token."""
        token = secrets.token_urlsafe(24)
        sep = "&" if "?" in url else "?"
        target = f"{url}{sep}validationToken={quote(token)}"
        try:
            client = self._client or httpx.AsyncClient()
            try:
                resp = await client.post(target, timeout=self.config.handshake_timeout_seconds)
            finally:
                if client is not self._client:
                    await client.aclose()
        except httpx.HTTPError as exc:
            raise ODataError(
                400, "BadRequest",
                f"The subscription was not created: the notification URL could not be reached "
                f"for validation ({type(exc).__name__}).",
            ) from None
        if resp.status_code != 200 or resp.text.strip().strip('"') != token:
            # UNCONFIRMED code/message: BC's docs only say no subscription is made.
            raise ODataError(
                400, "BadRequest",
                f"The subscription was not created: the notification URL answered the "
                f"validation request with HTTP {resp.status_code} and without the "
                f"validation token.",
            )

    @staticmethod
    def _require_fields(body: dict[str, Any]) -> tuple[str, str]:
        """notificationUrl and resource, or 400 as BC's "must not be blank" (error codes page:
        BadRequest_RequiredParamNotProvided)."""
        for name in ("notificationUrl", "resource"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise ODataError(400, "BadRequest_RequiredParamNotProvided",
                                 f"Field '{name}' must not be blank or empty.")
        return body["notificationUrl"], body["resource"]

    async def create(
        self, body: dict[str, Any], principal: str, company_ids: set[str]
    ) -> Subscription:
        url, resource = self._require_fields(body)
        client_state = body.get("clientState") or ""
        if not isinstance(client_state, str) or len(client_state) > 2048:
            raise ODataError(400, "Application_StringExceededLength",
                             f"The length of the string is {len(str(client_state))}, but it "
                             "must be less than or equal to 2048 characters.")
        company_id = parse_contacts_resource(resource)
        if company_id is None or not self.config.webhooks_supported:
            raise ODataError(400, "BadRequest_ResourceNotFound",
                             f"The resource '{resource}' does not support webhook "
                             "subscriptions.")
        if company_id not in company_ids:
            raise ODataError(404, "Internal_CompanyNotFound",
                             f"The company '{company_id}' cannot be found.")
        with self.lock:
            if len(self.subscriptions) >= self.config.max_subscriptions:
                raise ODataError(400, "Application_DialogException",
                                 f"You can have at most {self.config.max_subscriptions} "
                                 "subscriptions.")
        await self._handshake(url)
        now = _now_ms()
        sub = Subscription(
            subscription_id=uuid.uuid4().hex, notification_url=url, resource=resource,
            company_id=company_id, client_state=client_state,
            user_id=str(uuid.uuid5(uuid.NAMESPACE_OID, principal)),
            expiration_ms=now + int(self.config.subscription_lifetime_seconds * 1000),
            created_ms=now, modified_ms=now, rowversion=self._next_rowversion(),
        )
        with self.lock:
            self.subscriptions[sub.subscription_id] = sub
        return sub

    def get(self, subscription_id: str) -> Subscription:
        with self.lock:
            self._purge_expired()
            sub = self.subscriptions.get(subscription_id.strip("'"))
        if sub is None:
            raise ODataError(404, "BadRequest_NotFound",
                             f"The subscription '{subscription_id}' does not exist.")
        return sub

    def _check_etag(self, sub: Subscription, if_match: str | None) -> None:
        if if_match is None:
            raise ODataError(400, "BadRequest_InvalidToken",
                             "Could not validate the client concurrency token required by the "
                             "service. Please provide a valid token in the client request.")
        if if_match.strip() not in ("*", sub.etag):
            raise ODataError(self.config.stale_etag_status, "Request_EntityChanged",
                             "Another user has already changed the record.")

    async def renew(
        self, subscription_id: str, body: dict[str, Any], if_match: str | None
    ) -> Subscription:
        sub = self.get(subscription_id)
        self._check_etag(sub, if_match)
        if self.config.strict_renewal_body:
            # "Update subscriptions" shows the renewal PATCH with the subscription's body;
            # an empty one is refused here (config.strict_renewal_body says why).
            self._require_fields(body)
        url = body.get("notificationUrl") or sub.notification_url
        await self._handshake(url)  # every renewal repeats the handshake
        now = _now_ms()
        with self.lock:
            sub.notification_url = url
            if isinstance(body.get("clientState"), str):
                sub.client_state = body["clientState"]
            sub.expiration_ms = now + int(self.config.subscription_lifetime_seconds * 1000)
            sub.modified_ms = now
            sub.rowversion = self._next_rowversion()
            sub.failed_attempts = 0
        return sub

    def delete(self, subscription_id: str, if_match: str | None) -> None:
        sub = self.get(subscription_id)
        self._check_etag(sub, if_match)
        with self.lock:
            self.subscriptions.pop(sub.subscription_id, None)

    def all(self) -> list[Subscription]:
        with self.lock:
            self._purge_expired()
            return list(self.subscriptions.values())

    def _purge_expired(self) -> None:
        now = _now_ms()
        for sid in [s for s, sub in self.subscriptions.items() if sub.expiration_ms <= now]:
            del self.subscriptions[sid]

    # -- delivery (event loop) -------------------------------------------------------------

    def _build(self, force: bool) -> None:
        """Close due windows into deliveries. Caller holds the lock."""
        now = time.monotonic()
        self._purge_expired()
        for company_id, window in list(self._windows.items()):
            if not force and now - window.opened < self.config.notification_delay_seconds:
                continue
            del self._windows[company_id]
            subs = [s for s in self.subscriptions.values() if s.company_id == company_id]
            if not subs or not window.changes:
                continue
            items_by_url: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}
            for sub in subs:
                items = self._items_for(sub, window.changes)
                bucket = items_by_url.setdefault(sub.notification_url, ([], []))
                bucket[0].extend(items)
                bucket[1].append(sub.subscription_id)
            for url, (items, sids) in items_by_url.items():
                self._outbox.append(_Delivery(url=url, items=items, subscription_ids=sids,
                                              due=now))

    def _items_for(self, sub: Subscription, changes: list[_Change]) -> list[dict[str, Any]]:
        base = f"api/v2.0/companies({sub.company_id})/contacts"
        common = {
            "subscriptionId": sub.subscription_id,
            "clientState": sub.client_state,
            "expirationDateTime": format_ms(sub.expiration_ms),
        }
        per_record: dict[str, tuple[str, str, int]] = {}  # id -> (first, last, ms)
        for ch in changes:
            first = per_record.get(ch.contact_id, (ch.change, ch.change, ch.ms))[0]
            per_record[ch.contact_id] = (first, ch.change, ch.ms)
        if len(per_record) > self.config.max_notifications:
            earliest = min(ch.ms for ch in changes) - 50
            latest = max(ch.ms for ch in changes)
            resource = f"{base}?$filter=lastModifiedDateTime%20gt%20{format_ms(earliest)}"
            return [{**common, "resource": resource, "changeType": "collection",
                     "lastModifiedDateTime": format_ms(latest)}]
        items = []
        for contact_id, (first, last, ms) in per_record.items():
            change = "deleted" if last == "deleted" else "created" if first == "created" \
                else "updated"
            items.append({**common, "resource": f"{base}({contact_id})", "changeType": change,
                          "lastModifiedDateTime": format_ms(ms)})
        return items

    async def _send(self, delivery: _Delivery) -> None:
        assert self._client is not None
        body = json.dumps({"value": delivery.items})
        status: int | None
        try:
            resp = await self._client.post(
                delivery.url, content=body, headers={"Content-Type": "application/json"},
                timeout=self.config.notification_timeout_seconds,
            )
            status = resp.status_code
        except httpx.HTTPError:
            status = None
        self.history.append({"url": delivery.url, "status": status, "attempt": delivery.attempt,
                             "items": delivery.items})
        del self.history[:-1000]
        if status is not None and 200 <= status < 300:
            with self.lock:
                for sid in delivery.subscription_ids:
                    if sid in self.subscriptions:
                        self.subscriptions[sid].failed_attempts = 0
            return
        retryable = status is None or status in (408, 429) or status >= 500
        with self.lock:
            delivery.attempt += 1
            if retryable and delivery.attempt < MAX_DELIVERY_ATTEMPTS:
                delays = self.config.retry_delays_seconds
                gap = delays[min(delivery.attempt - 1, len(delays) - 1)]
                delivery.due = time.monotonic() + gap * self.config.retry_delay_scale
                self._outbox.append(delivery)
                for sid in delivery.subscription_ids:
                    if sid in self.subscriptions:
                        self.subscriptions[sid].failed_attempts = delivery.attempt
                return
            # Non-retryable answer, or out of attempts: BC deletes the subscriptions.
            for sid in delivery.subscription_ids:
                self.subscriptions.pop(sid, None)
            log.info("deleted subscriptions %s after HTTP %s", delivery.subscription_ids, status)

    async def deliver_due(self, force: bool = False) -> int:
        """Send everything that is due (all pending windows if `force`). Returns POSTs sent."""
        with self.lock:
            self._build(force)
            now = time.monotonic()
            due: list[_Delivery] = []
            waiting: list[_Delivery] = []
            for d in self._outbox:
                (due if force or d.due <= now else waiting).append(d)
            self._outbox = waiting
            sends: list[_Delivery] = []
            for d in due:
                if self.drop_next > 0:
                    self.drop_next -= 1
                    continue
                sends.append(d)
                if self.duplicate_next > 0:
                    self.duplicate_next -= 1
                    sends.append(_Delivery(d.url, list(d.items), list(d.subscription_ids), d.due,
                                           d.attempt))
        if sends:
            await asyncio.gather(*(self._send(d) for d in sends))
        return len(sends)

    def pending(self) -> int:
        """Changes waiting in open windows plus deliveries waiting for (re)try."""
        with self.lock:
            return sum(len(w.changes) for w in self._windows.values()) + len(self._outbox)

    def request_flush(self) -> None:
        """Ask the delivery task to close every open window now (from any thread)."""
        self._wake.set()

    async def run(self) -> None:
        """The delivery task: runs for the app's lifetime."""
        async with httpx.AsyncClient() as client:
            self._client = client
            try:
                while True:
                    force = self._wake.is_set()
                    self._wake.clear()
                    try:
                        await self.deliver_due(force=force)
                    except Exception:  # keep delivering whatever one POST did
                        log.exception("webhook delivery failed")
                    await asyncio.sleep(self.config.delivery_poll_seconds)
            finally:
                self._client = None

    def reset(self) -> None:
        with self.lock:
            self.subscriptions.clear()
            self._windows.clear()
            self._outbox.clear()
            self.history.clear()
            self.drop_next = self.duplicate_next = 0


@contextlib.asynccontextmanager
async def running(hub: WebhookHub) -> Any:
    task = asyncio.create_task(hub.run(), name="bc-webhook-delivery")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
