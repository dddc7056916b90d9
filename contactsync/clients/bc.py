"""Business Central API v2.0 client: contacts and webhook subscriptions (Microsoft's BC API v2.0
reference: contact, subscription).

Data are plain dicts in BC's wire shape (camelCase, `@odata.etag` kept), so the engine maps
fields without a model layer in between.

Resilience (docs/architecture.md decisions 9 and 10):
* every request passes a per-principal client-side budget (5 concurrent, 6,000 per 5 minutes
  by default), so we stay under BC's limits instead of discovering them;
* 429 honours Retry-After (and pauses the whole principal); 5xx, 408 and transport failures are
  retried with jittered exponential backoff (`RetryPolicy`);
* status codes become the `errors` tree in one function, `error_from_response`;
* writes are never repeated blindly after an *ambiguous* failure (5xx, timeout, dropped
  connection: BC may have applied it). Before repeating, the client looks:
  - create: a contact with the same email (or, without one, the same displayName), the same
    number if one was given, modified at or after the attempt started (minus
    `clock_skew`). Found -> that contact is the result. This can adopt a twin that a person
    created at the same moment with the same name and email; we accept that, since the link
    store would match it by email anyway (decision 4).
  - update: re-read; ETag unchanged -> not applied, repeat; our values present -> applied;
    otherwise somebody else wrote -> Conflict.
  - delete: re-read; gone -> done; ETag unchanged -> repeat; otherwise Conflict.
  - subscription create/renew/delete: list or re-read the subscription the same way.

Fields by environment: contact `jobTitle` came with BC 2024, and an older BC answers 400 to a
`$select` or body naming it. The client reads the `$metadata` document once (per client, i.e.
per company) and leaves properties the environment lacks out of `$select` and write bodies,
logging each once (`existing_fields`).

Tokens come from an azure-identity credential (sync or async) for
`https://api.businesscentral.dynamics.com/.default`, refreshed five minutes before expiry and
once more after a 401. They are never logged; neither are request bodies.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.credentials_async import AsyncTokenCredential

from contactsync.clients.errors import (
    Conflict,
    Invalid,
    NotFound,
    RetryableError,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    error_for_status,
    request_url,
    server_retry_after,
)
from contactsync.clients.http_transport import AiohttpTransport
from contactsync.clients.json_body import parse_json
from contactsync.clients.paging import prefetched_pages
from contactsync.clients.resilience import (
    BC_LIMITS,
    BudgetLimits,
    RequestBudget,
    RetryPolicy,
    retrying,
)
from contactsync.clients.telemetry import response_hooks

log = logging.getLogger(__name__)

BC_SCOPE = "https://api.businesscentral.dynamics.com/.default"
SERVICE = "bc"
MAX_PAGE_SIZE = 20_000
TOKEN_REFRESH_MARGIN = 300.0  # seconds before expiry

Contact = dict[str, Any]
Credential = TokenCredential | AsyncTokenCredential
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Errors: the one place that turns HTTP into the error tree
# --------------------------------------------------------------------------------------------


def error_from_response(
    status: int, body: bytes | str, headers: httpx.Headers | dict[str, str]
) -> ServiceError:
    """Map a BC error response to the error tree. BC bodies are `{"error":{"code","message"}}`;
    anything else (proxy HTML, empty) keeps the status and a generic message."""
    code, message = "", f"HTTP {status}"
    try:
        payload = json.loads(body) if body else None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            code = str(payload["error"].get("code") or "")
            message = str(payload["error"].get("message") or message)
    except ValueError:
        pass
    return error_for_status(status, message, service=SERVICE, code=code,
                            retry_after=headers.get("Retry-After"))


def error_from_transport(exc: httpx.TransportError) -> ServiceUnavailable:
    """Connection-phase failures never reached BC ("NotSent": safe to repeat any call);
    the rest (read timeout, dropped connection) are ambiguous."""
    not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return ServiceUnavailable(
        f"{type(exc).__name__} talking to Business Central",
        service=SERVICE, status=None, code="NotSent" if not_sent else type(exc).__name__,
        url=request_url(exc),
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def odata_literal(value: str) -> str:
    """A quoted OData string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def odata_datetime(value: datetime) -> str:
    """UTC, millisecond precision, as BC writes it: 2019-08-18T20:05:51.603Z."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_bc_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def contact_properties(metadata: bytes | str) -> frozenset[str] | None:
    """The property names of the `contact` entity type in a CSDL (`$metadata`) document, or
    None when it declares no such type."""
    root = ElementTree.fromstring(metadata)
    for entity in root.iter(f"{_EDM}EntityType"):
        if entity.get("Name") == "contact":
            return frozenset(str(p.get("Name")) for p in entity.iter(f"{_EDM}Property"))
    return None


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _TokenSource:
    """Bearer tokens from a sync or async azure-identity credential, cached until near expiry."""

    def __init__(self, credential: Credential, scope: str) -> None:
        self._credential = credential
        self._scope = scope
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    async def header(self, force: bool = False) -> str:
        async with self._lock:
            now = time.time()
            if force or self._token is None or self._token.expires_on - now < TOKEN_REFRESH_MARGIN:
                get = self._credential.get_token
                if inspect.iscoroutinefunction(get):
                    token = await cast(AsyncTokenCredential, self._credential).get_token(
                        self._scope
                    )
                else:
                    sync = cast(TokenCredential, self._credential)
                    token = await asyncio.to_thread(sync.get_token, self._scope)
                self._token = token
            return f"Bearer {self._token.token}"


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class BcClient:
    """Talks to one BC company. Build with `await BcClient.create(...)`; close with `aclose()`
    or `async with`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        company_id: str,
        *,
        tokens: _TokenSource | None = None,
        budget: RequestBudget | None = None,
        principal: str = "default",
        policy: RetryPolicy | None = None,
        page_size: int = MAX_PAGE_SIZE,
        clock_skew: timedelta = timedelta(minutes=5),
        owns_http: bool = True,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self.company_id = company_id
        self._tokens = tokens
        self._budget = budget or RequestBudget(BC_LIMITS)
        self.principal = principal
        self.policy = policy or RetryPolicy()
        self.page_size = min(page_size, MAX_PAGE_SIZE)
        self.clock_skew = clock_skew
        self._owns_http = owns_http
        self._contact_fields: frozenset[str] | None = None
        self._fields_known = False
        self._missing_logged: set[str] = set()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        base_url: str,
        company: str,
        credential: Credential | None = None,
        *,
        scope: str = BC_SCOPE,
        principal: str | None = None,
        budget: RequestBudget | None = None,
        limits: BudgetLimits = BC_LIMITS,
        policy: RetryPolicy | None = None,
        page_size: int = MAX_PAGE_SIZE,
        timeout: float = 120.0,
        http: httpx.AsyncClient | None = None,
    ) -> BcClient:
        """`base_url` runs up to and including `/api/v2.0`; `company` is an id or a name.

        Without a credential only a loopback URL (the emulator) is allowed."""
        if credential is None and not is_loopback_url(base_url):
            raise Unauthorized(
                "No Azure credential for Business Central at a non-local URL. Set "
                "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or pass a credential).",
                service=SERVICE,
            )
        tokens = _TokenSource(credential, scope) if credential is not None else None
        owns = http is None
        # HTTP/1.1 on aiohttp's C parser (http_transport.py); httpx's default pool size.
        client_http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), transport=AiohttpTransport(max_connections=100),
            event_hooks=response_hooks(SERVICE))
        self = cls(
            client_http, base_url, "", tokens=tokens,
            budget=budget or RequestBudget(limits),
            principal=principal or os.environ.get("AZURE_CLIENT_ID") or "default",
            policy=policy, page_size=page_size, owns_http=owns,
        )
        try:
            self.company_id = await self.resolve_company(company)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> BcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- transport -------------------------------------------------------------------------

    @property
    def company_url(self) -> str:
        return f"{self.base_url}/companies({self.company_id})"

    @property
    def contacts_url(self) -> str:
        return f"{self.company_url}/contacts"

    @property
    def contacts_resource(self) -> str:
        """The `resource` for a contacts subscription: the path from `/api/v2.0` on."""
        return f"/api/v2.0/companies({self.company_id})/contacts"

    async def _send(
        self, method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange inside the budget; errors mapped. No retries here."""
        hdrs = {"Accept": "application/json", **(headers or {})}
        for attempt in (0, 1):
            if self._tokens is not None:
                hdrs["Authorization"] = await self._tokens.header(force=attempt == 1)
            async with self._budget.slot(self.principal):
                try:
                    resp = await self._http.request(method, url, json=json, headers=hdrs,
                                                    params=params)
                except httpx.TransportError as exc:
                    raise error_from_transport(exc) from None
            log.debug("bc %s %s -> %s", method, urlsplit(url).path, resp.status_code)
            if resp.status_code == 401 and self._tokens is not None and attempt == 0:
                continue  # token revoked or expired early: refresh once
            if resp.status_code >= 400:
                err = error_from_response(resp.status_code, resp.content, resp.headers)
                err.url = url.split("?", 1)[0]
                wait = server_retry_after(err) if isinstance(err, RetryableError) else None
                if wait:  # a 429's or a 503's Retry-After holds back the whole principal
                    self._budget.pause(self.principal, wait)
                raise err
            return resp
        raise AssertionError("unreachable")

    async def _retry(
        self, call: Callable[[], Awaitable[T]], *, idempotent: bool = True,
        find_existing: Callable[[], Awaitable[T | None]] | None = None,
    ) -> T:
        return await retrying(call, self.policy, is_idempotent=idempotent,
                              find_existing=find_existing)

    async def _get_json(self, url: str, params: dict[str, str] | None = None,
                        headers: dict[str, str] | None = None) -> Any:
        async def call() -> Any:
            resp = await self._send("GET", url, params=params, headers=headers)
            return parse_json(resp.content)

        return await self._retry(call)

    # -- companies -------------------------------------------------------------------------

    async def list_companies(self) -> list[dict[str, Any]]:
        return list((await self._get_json(f"{self.base_url}/companies"))["value"])

    async def resolve_company(self, company: str) -> str:
        """A company id from an id or a name (name or displayName, exact)."""
        wanted = company.strip().strip("{}")
        companies = await self.list_companies()
        for c in companies:
            if str(c.get("id", "")).lower() == wanted.lower():
                return str(c["id"])
        for c in companies:
            if company in (c.get("name"), c.get("displayName")):
                return str(c["id"])
        names = ", ".join(repr(c.get("name")) for c in companies)
        raise NotFound(f"Business Central company {company!r} not found (have: {names})",
                       service=SERVICE, status=404)

    # -- contacts: reads -------------------------------------------------------------------

    def iter_contact_pages(
        self, odata_filter: str | None = None, page_size: int | None = None,
        select: list[str] | None = None,
    ) -> AsyncGenerator[list[Contact], None]:
        """Server-driven pages (Prefer: odata.maxpagesize), following `@odata.nextLink`, the
        next one requested before this one is handed over (paging.py)."""
        size = min(page_size or self.page_size, MAX_PAGE_SIZE)
        headers = {"Prefer": f"odata.maxpagesize={size}"}
        query: dict[str, str] = {}
        if odata_filter:
            query["$filter"] = odata_filter

        def next_page(page: dict[str, Any]) -> Awaitable[dict[str, Any]] | None:
            url = page.get("@odata.nextLink")  # it carries the query
            return self._get_json(url, headers=headers) if url else None

        async def first() -> dict[str, Any]:
            if select:  # only the properties this environment has (an older BC: 400)
                query["$select"] = ",".join(await self.existing_fields(select))
            return cast(dict[str, Any], await self._get_json(
                self.contacts_url, params=query or None, headers=headers))

        return prefetched_pages(first, next_page, lambda page: list(page.get("value", [])))

    async def list_contacts(
        self, odata_filter: str | None = None, page_size: int | None = None,
        select: list[str] | None = None,
    ) -> list[Contact]:
        out: list[Contact] = []
        async for page in self.iter_contact_pages(odata_filter, page_size, select):
            out.extend(page)
        return out

    @staticmethod
    def changed_since_filter(
        watermark: datetime, overlap: timedelta = timedelta(seconds=1),
        extra_filter: str | None = None,
    ) -> str:
        flt = f"lastModifiedDateTime gt {odata_datetime(watermark - overlap)}"
        return f"{flt} and ({extra_filter})" if extra_filter else flt

    async def list_changed_since(
        self, watermark: datetime, overlap: timedelta = timedelta(seconds=1),
        extra_filter: str | None = None, page_size: int | None = None,
    ) -> list[Contact]:
        """Contacts modified after `watermark - overlap` (the overlap absorbs clock rounding
        and commits that land out of order; duplicates are harmless, docs/architecture.md decision
        1)."""
        return await self.list_contacts(
            self.changed_since_filter(watermark, overlap, extra_filter), page_size
        )

    async def get_contact(self, contact_id: str) -> Contact:
        return dict(await self._get_json(f"{self.contacts_url}({contact_id})"))

    # -- contact fields by environment -----------------------------------------------------

    async def contact_fields(self) -> frozenset[str] | None:
        """The contact properties this environment's `$metadata` declares (asked once per
        client, i.e. per company; `jobTitle` came with BC 2024). None when the document cannot
        be read or has no contact type: then every field is tried, as before."""
        if not self._fields_known:
            try:
                resp = await self._retry(
                    lambda: self._send("GET", f"{self.base_url}/$metadata",
                                       headers={"Accept": "application/xml"}))
                self._contact_fields = contact_properties(resp.content)
            except (Invalid, NotFound, ElementTree.ParseError) as exc:
                log.warning("could not read Business Central's $metadata (%s); assuming every "
                            "contact field exists", exc)
            self._fields_known = True
        return self._contact_fields

    async def existing_fields(self, fields: Iterable[str]) -> list[str]:
        """`fields` without those this environment lacks (each logged once, not an error)."""
        known = await self.contact_fields()
        if known is None:
            return list(fields)
        kept = []
        for name in fields:
            if name in known or name.startswith("@odata."):
                kept.append(name)
            elif name not in self._missing_logged:
                self._missing_logged.add(name)
                log.warning("Business Central (company %s) has no contact field %r (an older "
                            "version?): it is not synced", self.company_id, name)
        return kept

    async def _writable(self, body: Contact) -> Contact:
        """A write body: annotations and properties this environment lacks left out."""
        keep = set(await self.existing_fields(body))
        return {k: v for k, v in body.items() if k in keep and not k.startswith("@odata.")}

    # -- contacts: writes ------------------------------------------------------------------

    async def create_contact(self, body: Contact) -> Contact:
        """POST a contact (201). See the module doc for what happens on ambiguous failures."""
        started = datetime.now(UTC)
        payload = await self._writable(body)

        async def call() -> Contact:
            return dict((await self._send("POST", self.contacts_url, json=payload)).json())

        async def find() -> Contact | None:
            return await self._find_created(payload, started)

        return await self._retry(call, idempotent=False, find_existing=find)

    async def _find_created(self, body: Contact, started: datetime) -> Contact | None:
        parts = [f"lastModifiedDateTime ge {odata_datetime(started - self.clock_skew)}"]
        if body.get("email"):
            parts.append(f"email eq {odata_literal(str(body['email']))}")
        if body.get("displayName"):
            parts.append(f"displayName eq {odata_literal(str(body['displayName']))}")
        if body.get("number"):
            parts.append(f"number eq {odata_literal(str(body['number']))}")
        found = await self.list_contacts(" and ".join(parts))
        if not found:
            return None
        return max(found, key=lambda c: str(c.get("lastModifiedDateTime", "")))

    async def update_contact(self, contact_id: str, changes: Contact, etag: str) -> Contact:
        """PATCH with If-Match; 200 and the contact. Stale ETag -> Conflict."""
        url = f"{self.contacts_url}({contact_id})"
        payload = await self._writable(changes)
        if not payload and changes:  # only fields this BC lacks: nothing to write
            return await self.get_contact(contact_id)

        async def call() -> Contact:
            resp = await self._send("PATCH", url, json=payload, headers={"If-Match": etag})
            return dict(resp.json())

        async def check() -> Contact | None:
            current = await self.get_contact(contact_id)
            if current.get("@odata.etag") == etag:
                return None  # not applied: repeat
            if all(current.get(k) == v for k, v in payload.items()):
                return current  # applied (or somebody wrote the same values)
            raise Conflict("contact changed by someone else during an ambiguous update",
                           service=SERVICE, status=412, code="Request_EntityChanged")

        return await self._retry(call, idempotent=False, find_existing=check)

    async def delete_contact(self, contact_id: str, etag: str) -> None:
        """DELETE with If-Match; 204."""
        url = f"{self.contacts_url}({contact_id})"

        async def call() -> bool:
            await self._send("DELETE", url, headers={"If-Match": etag})
            return True

        async def check() -> bool | None:
            try:
                current = await self.get_contact(contact_id)
            except NotFound:
                return True
            if current.get("@odata.etag") == etag:
                return None
            raise Conflict("contact changed by someone else during an ambiguous delete",
                           service=SERVICE, status=412, code="Request_EntityChanged")

        await self._retry(call, idempotent=False, find_existing=check)

    # -- webhooks --------------------------------------------------------------------------

    @property
    def runtime_url(self) -> str:
        """`.../api/microsoft/runtime/beta` next to `.../api/v2.0`."""
        root = self.base_url[: self.base_url.rfind("/api/v2.0")]
        return f"{root}/api/microsoft/runtime/beta"

    async def webhook_supported(self) -> bool:
        """Does BC offer webhooks on contacts? (reference c.4: UNCONFIRMED, so we ask.)
        An endpoint that is missing or refuses counts as "no": the product then polls."""
        url = f"{self.runtime_url}/companies({self.company_id})/webhookSupportedResources"
        try:
            data = await self._get_json(url, params={"$filter": "resource eq 'v2.0*'"})
        except (NotFound, Invalid):
            return False
        for row in data.get("value", []):
            resource = str(row.get("resource", "")).split("?")[0].rstrip("/")
            if resource.rsplit("/", 1)[-1].lower() == "contacts":
                return True
        return False

    @property
    def subscriptions_url(self) -> str:
        return f"{self.base_url}/subscriptions"

    def _subscription_url(self, subscription_id: str) -> str:
        return f"{self.subscriptions_url}('{subscription_id}')"

    async def list_subscriptions(self) -> list[dict[str, Any]]:
        return list((await self._get_json(self.subscriptions_url)).get("value", []))

    async def get_subscription(self, subscription_id: str) -> dict[str, Any]:
        return dict(await self._get_json(self._subscription_url(subscription_id)))

    async def create_subscription(
        self, notification_url: str, client_state: str, resource: str | None = None
    ) -> dict[str, Any]:
        """Subscribe to this company's contacts. BC calls `notification_url` with a
        validationToken first; if that fails BC answers 400 (Invalid)."""
        body = {"notificationUrl": notification_url, "resource": resource or
                self.contacts_resource, "clientState": client_state}

        async def call() -> dict[str, Any]:
            return dict((await self._send("POST", self.subscriptions_url, json=body)).json())

        async def find() -> dict[str, Any] | None:
            for sub in await self.list_subscriptions():
                if (sub.get("notificationUrl") == notification_url
                        and sub.get("resource") == body["resource"]
                        and sub.get("clientState") == client_state):
                    return sub
            return None

        return await self._retry(call, idempotent=False, find_existing=find)

    async def renew_subscription(
        self, subscription_id: str, etag: str, *, notification_url: str, resource: str,
        client_state: str,
    ) -> dict[str, Any]:
        """PATCH with If-Match and the subscription's body (notificationUrl, resource,
        clientState), as "Update subscriptions" shows it: BC repeats the handshake and extends
        expiry by 3 days."""
        body = {"notificationUrl": notification_url, "resource": resource,
                "clientState": client_state}
        url = self._subscription_url(subscription_id)

        async def call() -> dict[str, Any]:
            resp = await self._send("PATCH", url, json=body, headers={"If-Match": etag})
            return dict(resp.json())

        async def check() -> dict[str, Any] | None:
            current = await self.get_subscription(subscription_id)
            return None if current.get("@odata.etag") == etag else current

        return await self._retry(call, idempotent=False, find_existing=check)

    async def delete_subscription(self, subscription_id: str, etag: str = "*") -> None:
        """DELETE `subscriptions('{id}')` with If-Match (BC requires it)."""
        url = self._subscription_url(subscription_id)

        async def call() -> bool:
            await self._send("DELETE", url, headers={"If-Match": etag})
            return True

        async def check() -> bool | None:
            try:
                await self.get_subscription(subscription_id)
            except NotFound:
                return True
            return None

        await self._retry(call, idempotent=False, find_existing=check)
