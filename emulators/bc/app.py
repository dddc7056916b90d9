"""The Business Central API v2.0 emulator: companies, contacts, subscriptions, as a Starlette app.

Service paths are `/v2.0/{environment}/api/v2.0/...` (and the `/v2.0/{tenant}/{environment}/...`
form); the admin API lives under `/_emulator` (admin.py) and is neither counted nor throttled.

Middleware, outermost first: request counters, then the per-principal throttle and injected
faults, then the routes. Handlers raise `ODataError`; `_odata` turns it into BC's error body.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from contactsync.emulators.bc.config import BcEmulatorConfig
from contactsync.emulators.bc.errors import ODataError, error_response
from contactsync.emulators.bc.metadata import metadata_document
from contactsync.emulators.bc.odata_filter import Schema, compile_filter, seek_lower_bound
from contactsync.emulators.bc.seed import SeedSpec, seed
from contactsync.emulators.bc.state import BcState, Company, StoredContact, contact_fields
from contactsync.emulators.bc.webhooks import WebhookHub, running
from contactsync.emulators.common.counters import CountingMiddleware, RequestCounters
from contactsync.emulators.common.faults import FaultInjector, FaultSpec
from contactsync.emulators.common.throttle import Budget, Throttle


def contact_schema(fields: tuple[str, ...]) -> Schema:
    """The `$filter` schema of an environment's contact properties."""
    kinds = {"privacyBlocked": "bool", "lastModifiedDateTime": "datetime",
             "lastInteractionDate": "date"}
    return Schema({f: kinds.get(f, "string") for f in fields})

COMPANY_SCHEMA = Schema({"id": "string", "name": "string", "displayName": "string"},
                        entity="Microsoft.NAV.company")
OTHER_WEBHOOK_RESOURCES = ["customers", "vendors", "items", "salesInvoices", "employees"]

Handler = Callable[[Request], Awaitable[Response]]


def principal_of(authorization: str | None) -> str:
    """The bearer token's subject (oid, else sub, else appid), or a hash of an opaque token,
    or "anonymous". Tokens are not verified: this is an emulator. Never logged."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return "anonymous"
    token = authorization[7:].strip()
    parts = token.split(".")
    if len(parts) == 3:
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            for claim in ("oid", "sub", "appid"):
                if isinstance(payload.get(claim), str):
                    return str(payload[claim])
        except (ValueError, UnicodeDecodeError):
            pass
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


class ServiceGate:
    """Throttle (per principal) and injected faults for service paths."""

    def __init__(self, app: ASGIApp, emulator: BcEmulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        principal = principal_of(auth.decode("latin-1") if auth else None)
        throttle = self.emulator.throttle
        retry_after = throttle.try_acquire(principal)
        if retry_after is not None:
            resp = error_response(
                429, "Application_TooManyRequests",
                "Too many requests reached for this user. Retry after the time given in "
                "the Retry-After header.",
                {"Retry-After": str(int(retry_after))},
            )
            await resp(scope, receive, send)
            return
        try:
            fault = await self.emulator.faults.apply(scope["method"], scope["path"])
            if fault is None:
                await self.app(scope, receive, send)
                return
            if fault.kind == "drop_response":
                # The request takes effect; its answer is replaced (a lost response).
                async def discard(_message: Any) -> None:
                    return None

                await self.app(scope, receive, discard)
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            code = {429: "Application_TooManyRequests", 503: "Internal_ServiceUnavailable",
                    500: "Internal_ServerError", 504: "Internal_GatewayTimeout"}.get(
                fault.status, "Internal_ServerError")
            resp = error_response(fault.status, code, "Injected fault.", extra)
            await resp(scope, receive, send)
        finally:
            throttle.release(principal)


def _odata(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ODataError as err:
            return err.response()

    return wrapped


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return Response(text, status_code=status, media_type="application/json; odata.metadata=minimal",
                    headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ODataError(400, "BadRequest", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ODataError(400, "BadRequest", "The request body must be a JSON object.")
    return data


def _max_page_size(request: Request) -> int | None:
    prefer = request.headers.get("prefer", "")
    m = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", prefer)
    return int(m.group(1)) if m else None


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ODataError(400, "BadRequest", f"Invalid value '{raw}' for {name}.")
    return int(raw)


def _select(request: Request, allowed: tuple[str, ...]) -> list[str] | None:
    raw = request.query_params.get("$select")
    if not raw:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for n in names:
        if n not in allowed:
            raise ODataError(400, "BadRequest_NotFound",
                             f"Could not find a property named '{n}' on type "
                             "'Microsoft.NAV.contact'.")
    return names


def _next_link(request: Request, overrides: dict[str, str]) -> str:
    params = {k: v for k, v in request.query_params.items() if k not in overrides}
    params.update(overrides)
    return str(request.url.replace(query=urlencode(params, quote_via=quote, safe="$'(),*")))


class BcEmulator:
    """State, webhooks, throttle, faults and counters of one emulated BC environment, plus the
    Python helpers tests use (same operations as the admin API)."""

    def __init__(self, config: BcEmulatorConfig | None = None) -> None:
        self.config = config or BcEmulatorConfig()
        self.state = BcState(self.config.companies, contact_fields(self.config.job_title_field))
        self.contact_schema = contact_schema(self.state.fields)
        self.hub = WebhookHub(self.config)
        self.state.listeners.append(self.hub.on_change)
        self.counters = RequestCounters()
        self.faults = FaultInjector()
        self.throttle = Throttle(Budget(self.config.max_concurrent, self.config.max_requests,
                                        self.config.window_seconds))
        self.app = self._build_app()

    # -- Python helpers (tests, sandbox) ----------------------------------------------------

    @property
    def company_id(self) -> str:
        return self.state.default_company().id

    def _company(self, company: str | None) -> Company:
        return self.state.company(company) if company else self.state.default_company()

    def seed(self, spec: SeedSpec | None = None, **kwargs: Any) -> dict[str, Any]:
        return seed(self.state, spec or SeedSpec(**kwargs))

    def create_contact(self, body: dict[str, Any], company: str | None = None) -> dict[str, Any]:
        """Act as a person creating a contact in BC (notifies subscribers)."""
        return self.state.create(self._company(company), body).entity()

    def update_contact(
        self, contact_id: str, changes: dict[str, Any], company: str | None = None
    ) -> dict[str, Any]:
        return self.state.update(self._company(company), contact_id, changes).entity()

    def delete_contact(self, contact_id: str, company: str | None = None) -> None:
        self.state.delete(self._company(company), contact_id)

    def contact(self, contact_id: str, company: str | None = None) -> dict[str, Any]:
        return self.state.get(self._company(company), contact_id).entity()

    def contacts(self, company: str | None = None) -> list[dict[str, Any]]:
        c = self._company(company)
        with self.state.lock:
            return [s.entity() for s in c.contacts.values()]

    def tombstones(self, company: str | None = None) -> list[dict[str, Any]]:
        c = self._company(company)
        with self.state.lock:
            return [{"id": t.id, "number": t.number, "deletedAt": t.deleted_ms}
                    for t in c.tombstones.values()]

    def inject_fault(self, spec: FaultSpec | None = None, **kwargs: Any) -> None:
        self.faults.add(spec or FaultSpec(**kwargs))

    def throttle_burst(self, seconds: float, principal: str = "*") -> None:
        """Every request of `principal` ("*" = all) gets 429 for `seconds`."""
        self.throttle.force(principal, seconds)

    def notification_faults(self, drop: int = 0, duplicate: int = 0) -> None:
        with self.hub.lock:
            self.hub.drop_next += drop
            self.hub.duplicate_next += duplicate

    def set_webhooks_supported(self, supported: bool) -> None:
        self.config.webhooks_supported = supported

    def flush_notifications(self) -> None:
        """Close open notification windows now instead of after the delay."""
        self.hub.request_flush()

    def counters_snapshot(self) -> dict[str, Any]:
        return self.counters.snapshot()

    def reset_counters(self) -> None:
        self.counters.reset()

    def save_snapshot(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state.to_snapshot()), encoding="utf-8")

    def load_snapshot(self, path: str | Path) -> None:
        self.state.load_snapshot(json.loads(Path(path).read_text(encoding="utf-8")))

    def reset(self) -> None:
        """Back to empty companies, no subscriptions, no faults, zero counters."""
        self.state.load_snapshot(BcState(self.config.companies, self.state.fields).to_snapshot())
        self.hub.reset()
        self.faults.clear()
        self.counters.reset()
        self.throttle = Throttle(Budget(self.config.max_concurrent, self.config.max_requests,
                                        self.config.window_seconds))

    # -- HTTP -------------------------------------------------------------------------------

    def _check_env(self, request: Request) -> None:
        env = request.path_params.get("env")
        if env != self.config.environment:
            raise ODataError(404, "NoEnvironment",
                             f"Environment '{env}' does not exist.")

    def _company_from(self, request: Request) -> Company:
        self._check_env(request)
        return self.state.company(request.path_params["company_id"])

    async def list_companies(self, request: Request) -> Response:
        self._check_env(request)
        with self.state.lock:
            rows = [c.entity() for c in self.state.companies.values()]
        flt = request.query_params.get("$filter")
        if flt:
            pred, _ = compile_filter(flt, COMPANY_SCHEMA)
            rows = [r for r in rows if pred(r)]
        base = str(request.url).split("/companies")[0]
        return _json({"@odata.context": f"{base}/$metadata#companies", "value": rows})

    async def get_company(self, request: Request) -> Response:
        company = self._company_from(request)
        return _json(company.entity())

    async def list_contacts(self, request: Request) -> Response:
        company = self._company_from(request)
        q = request.query_params
        max_size = self.config.max_page_size
        top = _int_param(request, "$top")
        if top is not None and top > max_size:
            raise ODataError(413, "RequestEntityTooLarge",
                             f"The requested page size {top} exceeds the maximum page size "
                             f"{max_size}.")
        preferred = _max_page_size(request)
        page = min(preferred or max_size, max_size)
        limit = page if top is None else min(page, top)
        select = _select(request, self.state.fields)
        predicate: Callable[[dict[str, Any]], bool] | None = None
        seek: int | None = None
        if q.get("$filter"):
            predicate, ast = compile_filter(q["$filter"], self.contact_schema)
            seek = seek_lower_bound(ast)
        token = q.get("$skiptoken", "")
        rows, next_token = self._page(company, predicate, seek, q.get("$orderby"),
                                      _int_param(request, "$skip") or 0, token, limit)
        overrides: dict[str, str] = {}
        if next_token is not None and (top is None or top > limit):
            overrides["$skiptoken"] = next_token
            if top is not None:
                overrides["$top"] = str(top - limit)
            overrides["$skip"] = "0"
        base = str(request.url).split("/companies(")[0]
        context = f"{base}/$metadata#companies({company.id})/contacts"
        if select is None:
            value = ",".join(r.json() for r in rows)
        else:
            keep = ["@odata.etag", *select]
            value = ",".join(
                json.dumps({k: e[k] for k in keep}, ensure_ascii=False)
                for e in (r.entity() for r in rows)
            )
        text = f'{{"@odata.context":{json.dumps(context)},"value":[{value}]'
        if overrides:
            text += f',"@odata.nextLink":{json.dumps(_next_link(request, overrides))}'
        text += "}"
        headers = {"Preference-Applied": f"odata.maxpagesize={page}"} if preferred else None
        return _json(text, headers=headers)

    def _page(
        self, company: Company, predicate: Callable[[dict[str, Any]], bool] | None,
        seek_us: int | None, orderby: str | None, skip: int, token: str, limit: int,
    ) -> tuple[list[StoredContact], str | None]:
        """One page and the skiptoken of the next (None = last page).

        Without $orderby: by insertion order (skiptoken "s<seq>"), or, when the filter has a
        `lastModifiedDateTime gt|ge X` conjunct, by modified time from a bisect (skiptoken
        "m<ms>"). A contact modified while a client pages moves to the end of the modified
        order, so it is seen again, never missed. With $orderby: sorted, skiptoken is an
        offset (a snapshot-free approximation of BC's key-based skiptoken)."""
        with self.state.lock:
            if orderby:
                parts = orderby.split()
                prop = parts[0]
                if prop not in self.state.fields:
                    raise ODataError(400, "BadRequest_NotFound",
                                     f"Could not find a property named '{prop}' on type "
                                     "'Microsoft.NAV.contact'.")
                desc = len(parts) > 1 and parts[1].lower() == "desc"
                matches = [c for c in company.contacts.values()
                           if predicate is None or predicate(c.data)]
                matches.sort(key=lambda c: (c.data[prop], c.seq), reverse=desc)
                offset = int(token[1:]) if token.startswith("o") else 0
                start = offset + skip
                rows = matches[start:start + limit]
                more = start + limit < len(matches)
                return rows, (f"o{start + limit}" if more else None)
            if seek_us is not None or token.startswith("m"):
                after = int(token[1:]) if token.startswith("m") else seek_us // 1000 - 1 \
                    if seek_us is not None else 0
                source = company.iter_by_modified(after)
                key_of: Callable[[StoredContact], str] = lambda c: f"m{c.modified_ms}"  # noqa: E731
            else:
                after = int(token[1:]) if token.startswith("s") else 0
                source = company.iter_by_seq(after)
                key_of = lambda c: f"s{c.seq}"  # noqa: E731
            rows = []
            skipped = 0
            for c in source:
                if predicate is not None and not predicate(c.data):
                    continue
                if skipped < skip:
                    skipped += 1
                    continue
                if len(rows) == limit:
                    return rows, key_of(rows[-1])
                rows.append(c)
            return rows, None

    def _entity_response(self, request: Request, company: Company, stored: StoredContact,
                         status: int = 200) -> Response:
        base = str(request.url).split("/companies(")[0]
        entity = stored.entity()
        select = _select(request, self.state.fields)
        if select is not None:
            entity = {k: entity[k] for k in ["@odata.etag", *select]}
        body = {"@odata.context": f"{base}/$metadata#companies({company.id})/contacts/$entity",
                **entity}
        headers = {"ETag": stored.etag}
        if status == 201:
            headers["Location"] = f"{base}/companies({company.id})/contacts({stored.data['id']})"
        return _json(body, status, headers)

    async def get_contact(self, request: Request) -> Response:
        company = self._company_from(request)
        stored = self.state.get(company, request.path_params["contact_id"])
        return self._entity_response(request, company, stored)

    async def create_contact_http(self, request: Request) -> Response:
        company = self._company_from(request)
        stored = self.state.create(company, await _body(request))
        return self._entity_response(request, company, stored, 201)

    @staticmethod
    def _require_if_match(request: Request) -> str:
        value = request.headers.get("if-match")
        if not value:
            raise ODataError(400, "BadRequest_InvalidToken",
                             "Could not validate the client concurrency token required by the "
                             "service. Please provide a valid token in the client request.")
        return value

    async def update_contact_http(self, request: Request) -> Response:
        company = self._company_from(request)
        if_match = self._require_if_match(request)
        stored = self.state.update(company, request.path_params["contact_id"],
                                   await _body(request), if_match=if_match,
                                   stale_status=self.config.stale_etag_status)
        return self._entity_response(request, company, stored)

    async def delete_contact_http(self, request: Request) -> Response:
        company = self._company_from(request)
        # The docs list If-Match as required on DELETE; decompiled BC checks it only when sent.
        # We follow the docs (stricter), so a client that works here works there.
        if_match = self._require_if_match(request)
        self.state.delete(company, request.path_params["contact_id"], if_match=if_match,
                          stale_status=self.config.stale_etag_status)
        return Response(status_code=204)

    async def metadata(self, request: Request) -> Response:
        """`GET .../api/v2.0/$metadata`: the CSDL (EDMX) document, matching this
        environment's contact properties ("Use OData to return and obtain a service metadata
        document", dev-itpro/webservices/return-obtain-service-metadata-edmx-document)."""
        self._check_env(request)
        return Response(metadata_document(self.state.fields), media_type="application/xml")

    async def list_subscriptions(self, request: Request) -> Response:
        self._check_env(request)
        return _json({"value": [s.entity() for s in self.hub.all()]})

    async def create_subscription(self, request: Request) -> Response:
        self._check_env(request)
        principal = principal_of(request.headers.get("authorization"))
        with self.state.lock:
            ids = set(self.state.companies)
        sub = await self.hub.create(await _body(request), principal, ids)
        return _json(sub.entity(), 201, {"ETag": sub.etag})

    async def get_subscription(self, request: Request) -> Response:
        self._check_env(request)
        sub = self.hub.get(request.path_params["sub_key"])
        return _json(sub.entity(), headers={"ETag": sub.etag})

    async def renew_subscription(self, request: Request) -> Response:
        self._check_env(request)
        sub = await self.hub.renew(request.path_params["sub_key"], await _body(request),
                                   request.headers.get("if-match"))
        return _json(sub.entity(), headers={"ETag": sub.etag})

    async def delete_subscription(self, request: Request) -> Response:
        self._check_env(request)
        self.hub.delete(request.path_params["sub_key"], request.headers.get("if-match"))
        return Response(status_code=204)

    async def webhook_supported_resources(self, request: Request) -> Response:
        """`{"value": [{"resource": "v2.0/accounts"}, ...]}`, as the example of "Working with
        webhooks in Dynamics 365 Business Central" (api-reference/v2.0/dynamics-subscriptions,
        "Supported entities"). That page's list has no contacts; whether an environment lists
        them is `config.webhooks_supported`."""
        self._check_env(request)
        names = list(OTHER_WEBHOOK_RESOURCES)
        if self.config.webhooks_supported:
            names.append("contacts")
        rows = [{"resource": f"v2.0/{n}"} for n in names]
        flt = request.query_params.get("$filter", "")
        m = re.fullmatch(r"\s*resource\s+eq\s+'([^']*)'\s*", flt)
        if flt and m is None:
            raise ODataError(400, "BadRequest", f"Unsupported $filter '{flt}'.")
        if m is not None:
            rows = [r for r in rows if fnmatchcase(r["resource"], m.group(1))]
        return _json({"value": rows})

    def _build_app(self) -> Starlette:
        from contactsync.emulators.bc.admin import admin_routes

        routes: list[Route] = []
        for prefix in ("/v2.0/{env}", "/v2.0/{tenant}/{env}"):
            api = f"{prefix}/api/v2.0"
            runtime = f"{prefix}/api/microsoft/runtime/beta"
            routes += [
                Route(f"{api}/$metadata", _odata(self.metadata), methods=["GET"]),
                Route(f"{api}/companies", _odata(self.list_companies), methods=["GET"]),
                Route(f"{api}/companies({{company_id}})", _odata(self.get_company),
                      methods=["GET"]),
                Route(f"{api}/companies({{company_id}})/contacts", _odata(self.list_contacts),
                      methods=["GET"]),
                Route(f"{api}/companies({{company_id}})/contacts",
                      _odata(self.create_contact_http), methods=["POST"]),
                Route(f"{api}/companies({{company_id}})/contacts({{contact_id}})",
                      _odata(self.get_contact), methods=["GET"]),
                Route(f"{api}/companies({{company_id}})/contacts({{contact_id}})",
                      _odata(self.update_contact_http), methods=["PATCH"]),
                Route(f"{api}/companies({{company_id}})/contacts({{contact_id}})",
                      _odata(self.delete_contact_http), methods=["DELETE"]),
                Route(f"{api}/subscriptions", _odata(self.list_subscriptions), methods=["GET"]),
                Route(f"{api}/subscriptions", _odata(self.create_subscription),
                      methods=["POST"]),
                Route(f"{api}/subscriptions({{sub_key}})", _odata(self.get_subscription),
                      methods=["GET"]),
                Route(f"{api}/subscriptions({{sub_key}})", _odata(self.renew_subscription),
                      methods=["PATCH"]),
                Route(f"{api}/subscriptions({{sub_key}})", _odata(self.delete_subscription),
                      methods=["DELETE"]),
                Route(f"{runtime}/companies({{company_id}})/webhookSupportedResources",
                      _odata(self.webhook_supported_resources), methods=["GET"]),
                Route(f"{runtime}/webhookSupportedResources",
                      _odata(self.webhook_supported_resources), methods=["GET"]),
            ]
        routes += admin_routes(self)

        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with running(self.hub):
                yield

        app = Starlette(routes=routes, lifespan=lifespan)
        app.add_middleware(ServiceGate, emulator=self)
        app.add_middleware(CountingMiddleware, counters=self.counters)
        app.state.bc = self
        return app


def create_bc_app(config: BcEmulatorConfig | None = None) -> Starlette:
    """A fresh emulator's ASGI app; the `BcEmulator` is at `app.state.bc`."""
    return BcEmulator(config).app
