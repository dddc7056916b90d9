"""Microsoft Graph client for Outlook contacts and change-notification subscriptions.

Built on msgraph-sdk (async): the SDK's `GraphRequestAdapter` supplies authentication
(azure-identity via kiota, or anonymous for a loopback emulator), its middleware pipeline and
its request builders' URL templates. Responses are read raw (`NativeResponseHandler`) and bodies
are sent as JSON bytes, so data in and out is **plain dicts in Graph's wire shape** (camelCase,
e.g. `{"givenName": ..., "emailAddresses": [{"name", "address"}], "@odata.etag": ...}`): no
model parsing cost per contact, no conversion for the engine's BC<->Graph mapping.

Ids: every request that returns or names a contact id asks for immutable ids, in ONE Prefer
header carrying every preference (`odata.maxpagesize=200, IdType="ImmutableId"` on delta pages,
first page and links alike); each `$batch` inner request carries its own, since Graph applies
Prefer per request. So links, delta, notifications and creates all speak one id form.

Every contact we write carries the BC contact id in a single-value extended property,
`BC_ID_PROPERTY` (a named property in our own GUID namespace, reference 1.6). Reads that
return contacts expand it, so `bc_id_of(contact)` gives it back; `find_by_bc_id` filters on it.

Resilience (`contactsync.clients.resilience`):
* a client-side budget per mailbox (Graph: 4 concurrent, 10,000 per 10 minutes) so we queue
  instead of drawing 429s; a 429's Retry-After pauses the whole mailbox;
* retries with jittered exponential backoff for 429/5xx/timeouts, bounded by `RetryPolicy`;
* the SDK's own RetryHandler is switched off (`should_retry=False`) for every request: it would
  repeat POSTs blindly (reference 5.7) and bypass our budget;
* creates are never repeated blindly: after an ambiguous failure (5xx, timeout, dropped
  connection, a whole `$batch` failed with 424 or 429) the contact is looked up by its BC id
  first and created only if absent.
  GET/PATCH/DELETE retry freely; a DELETE that finds nothing on a retry counts as done.
  A PATCH with If-Match retried after an ambiguous failure may answer Conflict because our own
  first attempt landed; callers treat Conflict as "re-read and re-plan" anyway.

Errors are mapped in one place (`graph_errors.graph_failure`) to `contactsync.clients.errors`.
Nothing here logs a token, a secret or a request body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast
from urllib.parse import quote, urlsplit

import httpx
from kiota_abstractions.authentication import (
    AnonymousAuthenticationProvider,
    AuthenticationProvider,
)
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.method import Method
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_abstractions.request_information import RequestInformation
from kiota_abstractions.request_option import RequestOption
from kiota_http.middleware.options import ResponseHandlerOption, RetryHandlerOption
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory

from contactsync.clients.errors import (
    Conflict,
    Invalid,
    NotFound,
    RetryableError,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    server_retry_after,
)
from contactsync.clients.graph_errors import SERVICE, graph_failure
from contactsync.clients.json_body import parse_json
from contactsync.clients.paging import prefetched_pages
from contactsync.clients.resilience import (
    GRAPH_MAILBOX_LIMITS,
    BudgetLimits,
    RequestBudget,
    RetryPolicy,
    default_is_ambiguous,
    retry_delay,
    retrying,
)
from contactsync.clients.telemetry import response_hooks
from contactsync.engine.mapping import BC_ID_PROPERTY  # one tag, shared with the planner

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

log = logging.getLogger(__name__)
T = TypeVar("T")
Json = dict[str, Any]

DEFAULT_BASE_URL = "https://graph.microsoft.com/v1.0"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
BATCH_LIMIT = 20
NO_CREDENTIALS = (
    "no Azure credentials configured: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
)
# Subscription API limit is per app and tenant (2000 per 20 s), not per mailbox.
SUBSCRIPTION_LIMITS = BudgetLimits(8, 2000, 20.0)
_MAX_MINUTES = re.compile(r"can only be (\d+) minutes in the future", re.I)


def is_loopback(url: str) -> bool:
    """A URL on this machine (an emulator), where http and anonymous access are fine."""
    return (urlsplit(url).hostname or "").lower() in LOOPBACK_HOSTS


def prefer_header(*, immutable_ids: bool, page_size: int | None = None) -> str | None:
    """The ONE Prefer header of a request, carrying every preference (RFC 7240: comma-separated).
    Graph applies `IdType="ImmutableId"` per request, so every request that returns or names a
    contact id carries it: delta pages and `$batch` inner requests too (reference 1.8)."""
    prefs = [f"odata.maxpagesize={page_size}"] if page_size else []
    if immutable_ids:
        prefs.append('IdType="ImmutableId"')
    return ", ".join(prefs) or None


def _odata_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _q(segment: str) -> str:
    return quote(segment, safe="")


def bc_id_of(contact: Mapping[str, Any]) -> str | None:
    """The BC contact id tag of a contact read with the property expanded, as stored, else None
    (the engine compares it in canonical form: `mapping.bc_id_of`)."""
    for prop in contact.get("singleValueExtendedProperties") or ():
        if str(prop.get("id", "")).lower() == BC_ID_PROPERTY.lower():
            value = prop.get("value")
            return str(value) if value is not None else None
    return None


def with_bc_id(fields: Mapping[str, Any], bc_id: str) -> Json:
    """`fields` plus the BC id tag (replacing any tag already in the body)."""
    body = dict(fields)
    props = [
        p
        for p in body.get("singleValueExtendedProperties") or ()
        if str(p.get("id", "")).lower() != BC_ID_PROPERTY.lower()
    ]
    props.append({"id": BC_ID_PROPERTY, "value": bc_id})
    body["singleValueExtendedProperties"] = props
    return body


class DeltaResult(NamedTuple):
    changed: list[Json]  # full contacts (Outlook sends the whole item), `@odata.etag` included
    removed: list[str]  # ids with `@removed`
    delta_link: str


@dataclass
class CreateResult:
    bc_id: str
    contact: Json | None = None  # the created (or found) contact
    error: ServiceError | None = None
    existed: bool = False  # found by BC id after an ambiguous failure, not created again

    @property
    def ok(self) -> bool:
        return self.error is None and self.contact is not None


@dataclass
class GraphClientOptions:
    list_page_size: int = 500  # $top for listing; Graph's cap is likely 1000 (reference 1.4)
    delta_page_size: int = 200  # Prefer: odata.maxpagesize; Graph caps contact delta at 200
    immutable_ids: bool = True  # Prefer: IdType="ImmutableId" (ids survive folder moves, 1.8)
    limits: BudgetLimits = GRAPH_MAILBOX_LIMITS
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class _Response(NamedTuple):
    status: int
    headers: httpx.Headers
    body: Any


class GraphClient:
    """One per process (it holds the connection pool and the per-mailbox budgets)."""

    def __init__(
        self,
        adapter: GraphRequestAdapter,
        options: GraphClientOptions | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.options = options or GraphClientOptions()
        self._adapter = adapter
        self._sdk = GraphServiceClient(request_adapter=adapter)
        self._http = http_client
        self._budget = RequestBudget(self.options.limits)
        self._sub_budget = RequestBudget(SUBSCRIPTION_LIMITS)
        self._batch_locks: dict[str, asyncio.Lock] = {}
        self._rng = random.Random()

    @classmethod
    def create(
        cls,
        base_url: str = DEFAULT_BASE_URL,
        credential: TokenCredential | AsyncTokenCredential | None = None,
        *,
        options: GraphClientOptions | None = None,
        timeout: float = 60.0,
        scopes: Sequence[str] = (GRAPH_SCOPE,),
    ) -> GraphClient:
        """A client for `base_url` (up to and including `/v1.0`; a trailing slash is fine).

        With `credential` (azure-identity ClientSecretCredential or CertificateCredential, sync
        or aio; the caller owns and closes it) tokens are fetched for `scopes`. Without one the
        requests are anonymous, which is allowed only for a loopback emulator.
        """
        base = base_url.rstrip("/")
        host = (urlsplit(base).hostname or "").lower()
        auth: AuthenticationProvider
        if credential is None:
            if host not in LOOPBACK_HOSTS:
                raise Unauthorized(NO_CREDENTIALS, service=SERVICE)
            auth = AnonymousAuthenticationProvider()
        else:
            from kiota_authentication_azure.azure_identity_authentication_provider import (
                AzureIdentityAuthenticationProvider,
            )

            auth = AzureIdentityAuthenticationProvider(
                credential, scopes=list(scopes), allowed_hosts=[host]
            )
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            http2=host not in LOOPBACK_HOSTS,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
            event_hooks=response_hooks(SERVICE),
        )
        middleware_options: dict[str, RequestOption] = {
            RetryHandlerOption.get_key(): RetryHandlerOption(should_retry=False),
        }
        http = GraphClientFactory.create_with_default_middleware(
            client=http, options=middleware_options
        )
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = base  # never a trailing slash: it would give `/v1.0//users` (5.3)
        return cls(adapter, options, http_client=http)

    @property
    def base_url(self) -> str:
        return str(self._adapter.base_url)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- transport ---------------------------------------------------------------------------
    def _request(
        self, method: Method, template: str, params: Mapping[str, Any], body: Any = None
    ) -> RequestInformation:
        ri = RequestInformation(method, template, dict(params))
        if body is not None:
            ri.set_stream_content(
                json.dumps(body, separators=(",", ":")).encode(), "application/json"
            )
        return ri

    def _url(self, url: str) -> RequestInformation:
        ri = RequestInformation(Method.GET)
        ri.url = url  # next/delta links are absolute and opaque: follow them verbatim
        return ri

    async def _send_once(
        self, ri: RequestInformation, *, delta: bool = False, page_size: int | None = None
    ) -> _Response:
        """One HTTP exchange; a non-2xx answer or transport failure raises a ServiceError."""
        ri.add_request_options([ResponseHandlerOption(NativeResponseHandler())])
        prefer = prefer_header(immutable_ids=self.options.immutable_ids, page_size=page_size)
        ri.headers.remove("Prefer")  # kiota's try_add keeps a first value: set exactly one
        if prefer:
            ri.headers.try_add("Prefer", prefer)
        try:
            resp = cast(httpx.Response, await self._adapter.send_async(ri, cast(Any, None), {}))
        except ServiceError:
            raise
        except (httpx.HTTPError, OSError) as exc:
            raise graph_failure(exc=exc) from exc
        try:
            body: Any = parse_json(resp.content) if resp.content else None
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise graph_failure(
                status=resp.status_code, headers=resp.headers, body=body, delta=delta
            )
        return _Response(resp.status_code, resp.headers, body)

    async def _send(
        self,
        principal: str,
        build: Callable[[], RequestInformation],
        *,
        idempotent: bool = True,
        find_existing: Callable[[], Awaitable[_Response | None]] | None = None,
        delta: bool = False,
        subscriptions: bool = False,
        page_size: int | None = None,
    ) -> _Response:
        budget = self._sub_budget if subscriptions else self._budget

        async def attempt() -> _Response:
            async with budget.slot(principal):
                try:
                    return await self._send_once(build(), delta=delta, page_size=page_size)
                except RetryableError as err:
                    retry_after = server_retry_after(err)  # a 429's or a 503's
                    if retry_after:
                        budget.pause(principal, float(retry_after))  # hold the whole mailbox
                    raise

        return await retrying(
            attempt,
            self.options.policy,
            is_idempotent=idempotent,
            find_existing=find_existing,
            rng=self._rng,
        )

    async def _get_pages(self, principal: str, first: RequestInformation) -> list[Json]:
        items: list[Json] = []
        async for page in self._iter_pages(principal, first):
            items.extend(page)
        return items

    def _iter_pages(
        self, principal: str, first: RequestInformation
    ) -> AsyncGenerator[list[Json], None]:
        """Each page's items, following `@odata.nextLink`, the next one already on its way
        while the caller works on this one (paging.py)."""

        def next_page(page: _Response) -> Awaitable[_Response] | None:
            link = page.body.get("@odata.nextLink")
            return self._send(principal, partial(self._url, str(link))) if link else None

        return prefetched_pages(lambda: self._send(principal, lambda: first), next_page,
                                lambda page: page.body.get("value") or [])

    # ---- users -------------------------------------------------------------------------------
    async def get_user(self, mailbox: str) -> Json:
        """The user behind a mailbox address or id (`id`, `userPrincipalName`, `mail`):
        `GET /users/{id | userPrincipalName}` ("Get user", learn.microsoft.com/graph/api/
        user-get). NotFound for no such user; an app needs User.Read.All to read users."""
        b = self._sdk.users.by_user_id(mailbox)
        qp = b.UserItemRequestBuilderGetQueryParameters(select=["id", "userPrincipalName", "mail"])
        ri = b.to_get_request_information(RequestConfiguration(query_parameters=qp))
        resp = await self._send(mailbox, lambda: ri)
        return cast(Json, resp.body)

    # ---- folders -----------------------------------------------------------------------------
    async def list_folders(self, mailbox: str) -> list[Json]:
        b = self._sdk.users.by_user_id(mailbox).contact_folders
        return await self._get_pages(mailbox, b.to_get_request_information())

    async def find_or_create_folder(self, mailbox: str, name: str = "Business Central") -> str:
        """The id of the top-level contact folder called `name`, created if missing."""

        async def find() -> str | None:
            for folder in await self.list_folders(mailbox):
                if str(folder.get("displayName", "")).casefold() == name.casefold():
                    return str(folder["id"])
            return None

        found = await find()
        if found:
            return found
        b = self._sdk.users.by_user_id(mailbox).contact_folders

        async def find_response() -> _Response | None:
            fid = await find()
            return _Response(201, httpx.Headers(), {"id": fid}) if fid else None

        try:
            resp = await self._send(
                mailbox,
                lambda: self._request(
                    Method.POST, b.url_template, b.path_parameters, {"displayName": name}
                ),
                idempotent=False,
                find_existing=find_response,
            )
        except Conflict:  # someone created it meanwhile (ErrorFolderExists)
            fid = await find()
            if fid is None:
                raise
            return fid
        return str(resp.body["id"])

    # ---- contacts ----------------------------------------------------------------------------
    def _contacts_builder(self, mailbox: str, folder_id: str) -> Any:
        return (
            self._sdk.users.by_user_id(mailbox)
            .contact_folders.by_contact_folder_id(folder_id)
            .contacts
        )

    def _contact_builder(self, mailbox: str, contact_id: str) -> Any:
        return self._sdk.users.by_user_id(mailbox).contacts.by_contact_id(contact_id)

    @staticmethod
    def _expand() -> list[str]:
        return [f"singleValueExtendedProperties($filter=id eq {_odata_str(BC_ID_PROPERTY)})"]

    async def list_contacts(
        self, mailbox: str, folder_id: str, select: Sequence[str] | None = None
    ) -> list[Json]:
        """Every contact in the folder (all pages), each with the BC-id property expanded."""
        items: list[Json] = []
        async for page in self.iter_contact_pages(mailbox, folder_id, select):
            items.extend(page)
        return items

    def iter_contact_pages(
        self, mailbox: str, folder_id: str, select: Sequence[str] | None = None
    ) -> AsyncGenerator[list[Json], None]:
        """`list_contacts` page by page, so a caller can keep less than the whole listing."""
        b = self._contacts_builder(mailbox, folder_id)
        qp = b.ContactsRequestBuilderGetQueryParameters(
            top=self.options.list_page_size,
            expand=self._expand(),
            select=list(select) if select else None,
        )
        ri = b.to_get_request_information(RequestConfiguration(query_parameters=qp))
        return self._iter_pages(mailbox, ri)

    async def find_by_bc_id(self, mailbox: str, folder_id: str, bc_id: str) -> Json | None:
        """The contact tagged with `bc_id` in the folder (the first, if a bug made several)."""
        found = await self._find(mailbox, folder_id, bc_id)
        return found[0] if found else None

    async def _find(self, mailbox: str, folder_id: str, bc_id: str) -> list[Json]:
        b = self._contacts_builder(mailbox, folder_id)
        flt = (
            f"singleValueExtendedProperties/Any(ep: ep/id eq {_odata_str(BC_ID_PROPERTY)} "
            f"and ep/value eq {_odata_str(bc_id)})"
        )
        qp = b.ContactsRequestBuilderGetQueryParameters(filter=flt, expand=self._expand(), top=10)
        ri = b.to_get_request_information(RequestConfiguration(query_parameters=qp))
        return await self._get_pages(mailbox, ri)

    async def find_by_email(self, mailbox: str, folder_id: str, address: str) -> list[Json]:
        """Contacts of the folder with this email address (Graph matches it case-insensitively)."""
        b = self._contacts_builder(mailbox, folder_id)
        flt = f"emailAddresses/any(a:a/address eq {_odata_str(address.strip())})"
        qp = b.ContactsRequestBuilderGetQueryParameters(filter=flt, expand=self._expand(), top=50)
        ri = b.to_get_request_information(RequestConfiguration(query_parameters=qp))
        return await self._get_pages(mailbox, ri)

    async def get_contact(self, mailbox: str, contact_id: str) -> Json:
        b = self._contact_builder(mailbox, contact_id)
        qp = b.ContactItemRequestBuilderGetQueryParameters(expand=self._expand())
        ri = b.to_get_request_information(RequestConfiguration(query_parameters=qp))
        resp = await self._send(mailbox, lambda: ri)
        return cast(Json, resp.body)

    async def update_contact(
        self,
        mailbox: str,
        contact_id: str,
        fields: Mapping[str, Any],
        *,
        if_match: str | None = None,
        bc_id: str | None = None,
    ) -> Json:
        """PATCH the given fields (send displayName too: Outlook may regenerate it). With
        `if_match` (a changeKey or an `@odata.etag`) a newer version gives Conflict."""
        body = with_bc_id(fields, bc_id) if bc_id is not None else dict(fields)
        b = self._contact_builder(mailbox, contact_id)

        def build() -> RequestInformation:
            ri = self._request(Method.PATCH, b.url_template, b.path_parameters, body)
            if if_match:
                ri.headers.try_add(
                    "If-Match", if_match if if_match.startswith(("W/", '"')) else f'W/"{if_match}"'
                )
            return ri

        resp = await self._send(mailbox, build)
        return cast(Json, resp.body)

    async def delete_contact(
        self, mailbox: str, contact_id: str, *, if_match: str | None = None
    ) -> bool:
        """Delete; False if it was already gone (deletes are idempotent)."""
        b = self._contact_builder(mailbox, contact_id)

        def build() -> RequestInformation:
            ri: RequestInformation = b.to_delete_request_information()
            if if_match:
                ri.headers.try_add(
                    "If-Match", if_match if if_match.startswith(("W/", '"')) else f'W/"{if_match}"'
                )
            return ri

        try:
            await self._send(mailbox, build)
        except NotFound:
            return False
        return True

    async def create_contact(
        self, mailbox: str, folder_id: str, bc_id: str, fields: Mapping[str, Any]
    ) -> Json:
        """Create one contact tagged with `bc_id` (never duplicated on an ambiguous failure)."""
        b = self._contacts_builder(mailbox, folder_id)
        body = with_bc_id(fields, bc_id)

        async def existing() -> _Response | None:
            found = await self.find_by_bc_id(mailbox, folder_id, bc_id)
            return _Response(200, httpx.Headers(), found) if found else None

        resp = await self._send(
            mailbox,
            lambda: self._request(Method.POST, b.url_template, b.path_parameters, body),
            idempotent=False,
            find_existing=existing,
        )
        return cast(Json, resp.body)

    async def create_contacts(
        self, mailbox: str, folder_id: str, contacts: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[CreateResult]:
        """Create contacts given as (bc_id, fields) through `$batch`, 20 per request.

        Returns one result per input, in order. An item whose create may have landed (5xx,
        timeout, a lost batch response) is looked up by its BC id before it is tried again.
        """
        results: list[CreateResult] = [CreateResult(bc_id) for bc_id, _ in contacts]
        for start in range(0, len(contacts), BATCH_LIMIT):
            await self._create_chunk(
                mailbox,
                folder_id,
                contacts,
                results,
                list(range(start, min(start + BATCH_LIMIT, len(contacts)))),
            )
        return results

    async def _create_chunk(
        self,
        mailbox: str,
        folder_id: str,
        contacts: Sequence[tuple[str, Mapping[str, Any]]],
        results: list[CreateResult],
        pending: list[int],
    ) -> None:
        url = f"/users/{_q(mailbox)}/contactFolders/{_q(folder_id)}/contacts"
        headers = {"Content-Type": "application/json"}
        prefer = prefer_header(immutable_ids=self.options.immutable_ids)
        if prefer:  # per inner request: Graph does not carry the batch's own Prefer over
            headers["Prefer"] = prefer
        verify: set[int] = set()
        retry_number = 0
        while pending:
            for i in sorted(verify):  # may have landed: look before creating again
                found = await self.find_by_bc_id(mailbox, folder_id, contacts[i][0])
                if found is not None:
                    results[i].contact, results[i].existed = found, True
                    pending.remove(i)
            if not pending:
                return
            failures: dict[int, RetryableError] = {}
            requests = [
                {
                    "id": str(i),
                    "method": "POST",
                    "url": url,
                    "headers": headers,
                    "body": with_bc_id(contacts[i][1], contacts[i][0]),
                }
                for i in pending
            ]
            whole_batch_failed = False
            try:
                answers = await self._batch(mailbox, requests)
            except RetryableError as err:  # the whole batch: 424, 429, 5xx, lost answer
                failures = dict.fromkeys(pending, err)
                whole_batch_failed = True
            except ServiceError as err:
                for i in pending:
                    results[i].error = err
                return
            else:
                for i in pending:
                    ans = answers.get(str(i))
                    if ans is None:  # never answered: as ambiguous as a 503
                        failures[i] = ServiceUnavailable("no answer in batch", service=SERVICE)
                    elif 200 <= int(ans.get("status", 0)) < 300:
                        results[i].contact = cast(Json, ans.get("body"))
                    else:
                        failure = graph_failure(
                            status=int(ans.get("status", 500)),
                            headers=ans.get("headers") or {},
                            body=ans.get("body"),
                        )
                        if isinstance(failure, RetryableError):
                            failures[i] = failure
                        else:
                            results[i].error = failure
            if not failures:
                return
            # Each failed item may carry its own Retry-After: wait for the longest one.
            worst = max(failures.values(), key=lambda e: server_retry_after(e) or 0.0)
            delay = retry_delay(self.options.policy, retry_number, worst, self._rng.random())
            if delay is None:
                for i, failed in failures.items():
                    results[i].error = failed
                return
            retry_after = server_retry_after(worst)
            if retry_after:
                self._budget.pause(mailbox, float(retry_after))
            await asyncio.sleep(delay)
            retry_number += 1
            pending = sorted(failures)
            # After a whole-batch failure no item says whether it ran: look each up by its BC
            # id before creating it again (never twice).
            verify = {i for i, failed in failures.items()
                      if whole_batch_failed or default_is_ambiguous(failed)}

    async def _batch(self, mailbox: str, requests: list[Json]) -> dict[str, Json]:
        """POST one `$batch` (never retried here: creates are not idempotent). Graph runs up to
        4 inner requests of a batch at once against the mailbox, so the batch holds that many
        of the mailbox's concurrency slots, and every inner request counts against the
        mailbox's request window; batches of one mailbox go one at a time."""
        lock = self._batch_locks.setdefault(mailbox, asyncio.Lock())
        slots = min(len(requests), self.options.limits.max_concurrent)
        async with lock:
            taken = 0
            try:
                for _ in range(slots):
                    await self._budget.acquire(mailbox)
                    taken += 1
                # Graph throttles each inner request: the rest count against the window too.
                await self._budget.charge(mailbox, len(requests) - slots)
                ri = self._request(Method.POST, "{+baseurl}/$batch", {}, {"requests": requests})
                resp = await self._send_once(ri)
            finally:
                for _ in range(taken):
                    self._budget.release(mailbox)
        return {str(r.get("id")): r for r in (resp.body or {}).get("responses") or []}

    # ---- delta -------------------------------------------------------------------------------
    async def delta(
        self, mailbox: str, folder_id: str, delta_link: str | None = None
    ) -> DeltaResult:
        """Changes in the folder since `delta_link` (all contacts when None), across all pages.

        Raises SyncStateExpired when Graph no longer knows the link: start again with None and
        reconcile by id / BC id.
        """
        if delta_link:
            first = self._url(delta_link)
        else:
            b = self._contacts_builder(mailbox, folder_id).delta
            first = b.to_get_request_information()
        size = self.options.delta_page_size
        changed: dict[str, Json] = {}
        removed: dict[str, None] = {}
        page = await self._send(mailbox, lambda: first, delta=True, page_size=size)
        while True:
            for item in page.body.get("value") or []:
                cid = str(item.get("id"))
                if "@removed" in item:  # the same id may come several times; last one wins
                    changed.pop(cid, None)
                    removed[cid] = None
                else:
                    removed.pop(cid, None)
                    changed[cid] = item
            if page.body.get("@odata.deltaLink"):
                return DeltaResult(
                    list(changed.values()), list(removed), str(page.body["@odata.deltaLink"])
                )
            link = page.body.get("@odata.nextLink")
            if not link:
                raise Invalid("delta page without nextLink or deltaLink", service=SERVICE)

            page = await self._send(
                mailbox, partial(self._url, str(link)), delta=True, page_size=size
            )

    # ---- subscriptions -----------------------------------------------------------------------
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
        b = self._sdk.subscriptions

        async def post(payload: Json) -> Json:
            resp = await self._send(
                "subscriptions",
                lambda: self._request(Method.POST, b.url_template, b.path_parameters, payload),
                idempotent=False,
                subscriptions=True,
            )
            return cast(Json, resp.body)

        try:
            return await post(body)
        except Invalid as err:
            shorter = _within_limit(err, expiration)
            if shorter is None:
                raise
            return await post(body | {"expirationDateTime": _iso(shorter)})

    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> Json:
        b = self._sdk.subscriptions.by_subscription_id(subscription_id)

        async def patch(when: datetime) -> Json:
            resp = await self._send(
                "subscriptions",
                lambda: self._request(
                    Method.PATCH,
                    b.url_template,
                    b.path_parameters,
                    {"expirationDateTime": _iso(when)},
                ),
                subscriptions=True,
            )
            return cast(Json, resp.body)

        try:
            return await patch(expiration)
        except Invalid as err:
            shorter = _within_limit(err, expiration)
            if shorter is None:
                raise
            return await patch(shorter)

    async def delete_subscription(self, subscription_id: str) -> bool:
        b = self._sdk.subscriptions.by_subscription_id(subscription_id)
        try:
            await self._send("subscriptions", b.to_delete_request_information, subscriptions=True)
        except NotFound:
            return False
        return True

    async def reauthorize_subscription(self, subscription_id: str) -> None:
        b = self._sdk.subscriptions.by_subscription_id(subscription_id).reauthorize
        await self._send(
            "subscriptions",
            lambda: self._request(Method.POST, b.url_template, b.path_parameters),
            subscriptions=True,
        )

    async def list_subscriptions(self) -> list[Json]:
        return await self._get_pages_sub(self._sdk.subscriptions.to_get_request_information())

    async def _get_pages_sub(self, first: RequestInformation) -> list[Json]:
        items: list[Json] = []
        page = await self._send("subscriptions", lambda: first, subscriptions=True)
        while True:
            items.extend(page.body.get("value") or [])
            link = page.body.get("@odata.nextLink")
            if not link:
                return items
            page = await self._send(
                "subscriptions", partial(self._url, str(link)), subscriptions=True
            )


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
