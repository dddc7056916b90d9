"""Graph's transport: the client's connection pool, authentication and budgets, one request.

Built on msgraph-sdk (async): the SDK's `GraphRequestAdapter` supplies authentication
(azure-identity via kiota, or anonymous for a loopback emulator), its middleware pipeline and
its request builders' URL templates. Responses are read raw (`NativeResponseHandler`) and bodies
are sent as JSON bytes, so data in and out is **plain dicts in Graph's wire shape** (camelCase,
e.g. `{"givenName": ..., "emailAddresses": [{"name", "address"}], "@odata.etag": ...}`): no
model parsing cost per contact, no conversion for the engine's BC<->Graph mapping.

Ids: every request that returns or names a contact id asks for immutable ids, in ONE Prefer
header carrying every preference (`odata.maxpagesize=200, IdType="ImmutableId"` on delta pages,
first page and links alike); each `$batch` inner request carries its own (batch.py), since
Graph applies Prefer per request. So links, delta, notifications and creates all speak one id
form.

Resilience (`contactsync.clients.resilience`):
* a client-side budget per mailbox (Graph: 4 concurrent, 10,000 per 10 minutes) so we queue
  instead of drawing 429s; a 429's Retry-After pauses the whole mailbox;
* retries with jittered exponential backoff for 429/5xx/timeouts, bounded by `RetryPolicy`;
* the SDK's own RetryHandler is switched off (`should_retry=False`) for every request: it would
  repeat POSTs blindly (reference 5.7) and bypass our budget;
* a request that is not idempotent is repeated after an ambiguous failure only once
  `find_existing` says it did not land (contacts.py, batch.py).

Errors are mapped in one place (`graph_errors.graph_failure`) to `contactsync.clients.errors`.
Nothing here logs a token, a secret or a request body.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, Self, cast
from urllib.parse import quote, urlsplit

import httpx
import orjson
from kiota_abstractions.authentication import (
    AnonymousAuthenticationProvider,
    AuthenticationProvider,
)
from kiota_abstractions.method import Method
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_abstractions.request_information import RequestInformation
from kiota_http.middleware import BaseMiddleware, RedirectHandler
from kiota_http.middleware.options import ResponseHandlerOption
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph_core import GraphClientFactory
from msgraph_core.middleware import GraphTelemetryHandler

from contactsync.clients.errors import (
    RetryableError,
    ServiceError,
    Unauthorized,
    server_retry_after,
)
from contactsync.clients.graph_errors import SERVICE, graph_failure
from contactsync.clients.http_transport import AiohttpTransport
from contactsync.clients.json_body import parse_json
from contactsync.clients.paging import prefetched_pages
from contactsync.clients.resilience import (
    GRAPH_MAILBOX_LIMITS,
    BudgetLimits,
    RequestBudget,
    RetryPolicy,
    retrying,
)
from contactsync.clients.telemetry import response_hooks

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

Json = dict[str, Any]

DEFAULT_BASE_URL = "https://graph.microsoft.com/v1.0"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
NO_CREDENTIALS = (
    "no Azure credentials configured: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
)


def sdk_middleware() -> list[BaseMiddleware]:
    """The SDK middleware each request passes through: redirects followed, and Graph's
    telemetry headers (`client-request-id`, which Microsoft support asks for, and SdkVersion).
    Left out of the SDK's default chain: its RetryHandler (we retry, within our budget, and
    never a POST blindly, reference 5.7), the parameter-name decoder (our URLs carry `$`
    as is), the `/me` URL replacer, the user-agent, headers and body inspection handlers.
    The whole chain was 6 % of the applier's CPU in pipeline_load."""
    return [RedirectHandler(), GraphTelemetryHandler()]


# Subscription API limit is per app and tenant (2000 per 20 s), not per mailbox.
SUBSCRIPTION_LIMITS = BudgetLimits(8, 2000, 20.0)


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


def _query(params: Mapping[str, Any] | None) -> str:
    """`?$top=10&$filter=...` (values quoted; lists comma-joined; None left out). OData's `$`
    stays literal in the names, as Graph documents them."""
    pairs = [(k, ",".join(v) if isinstance(v, list | tuple) else str(v))
             for k, v in (params or {}).items() if v is not None]
    return "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs) if pairs else ""




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


class GraphTransport:
    """The shared part of every Graph call: one per process (it holds the connection pool and
    the per-mailbox budgets)."""

    def __init__(
        self,
        adapter: GraphRequestAdapter,
        options: GraphClientOptions | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        pool: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = options or GraphClientOptions()
        self._adapter = adapter
        self._http = http_client
        self._pool = pool  # closed here: the SDK's transport around it does not pass aclose on
        self._budget = RequestBudget(self.options.limits)
        self._sub_budget = RequestBudget(SUBSCRIPTION_LIMITS)
        self._batch_locks: dict[str, asyncio.Lock] = {}  # batch.py: one batch per mailbox
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
    ) -> Self:
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
        # HTTP/1.1 on aiohttp's C parser, not httpx's pure-Python pool (http_transport.py).
        pool = AiohttpTransport(max_connections=200)
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            transport=pool,
            event_hooks=response_hooks(SERVICE),
        )
        http = GraphClientFactory.create_with_custom_middleware(sdk_middleware(), client=http)
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = base  # never a trailing slash: it would give `/v1.0//users` (5.3)
        return cls(adapter, options, http_client=http, pool=pool)

    @property
    def base_url(self) -> str:
        return str(self._adapter.base_url)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._pool is not None:
            await self._pool.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _request(
        self, method: Method, path: str, query: Mapping[str, Any] | None = None, body: Any = None
    ) -> RequestInformation:
        """A request for `path` under the base URL (`/users/{id}/...`, segments quoted by the
        caller with `_q`). The URL is written here, not expanded from the SDK's URI templates
        by its request builders: that expansion alone was 8 % of the applier's CPU in
        pipeline_load, and the builders a few objects per request."""
        ri = RequestInformation(method)
        ri.url = self.base_url + path + _query(query)
        if body is not None:
            ri.set_stream_content(orjson.dumps(body), "application/json")
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

    async def _get_pages(self, principal: str, first: RequestInformation, *,
                         subscriptions: bool = False) -> list[Json]:
        items: list[Json] = []
        async for page in self._iter_pages(principal, first, subscriptions=subscriptions):
            items.extend(page)
        return items

    def _iter_pages(
        self, principal: str, first: RequestInformation, *, subscriptions: bool = False
    ) -> AsyncGenerator[list[Json], None]:
        """Each page's items, following `@odata.nextLink`, the next one already on its way
        while the caller works on this one (paging.py)."""
        send = partial(self._send, principal, subscriptions=subscriptions)

        def next_page(page: _Response) -> Awaitable[_Response] | None:
            link = page.body.get("@odata.nextLink")
            return send(partial(self._url, str(link))) if link else None

        return prefetched_pages(lambda: send(lambda: first), next_page,
                                lambda page: page.body.get("value") or [])
