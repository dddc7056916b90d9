"""The Microsoft Graph emulator: `create_graph_app()` and the `GraphEmulator` that owns state.

Every `/v1.0` endpoint runs inside `_guard`: injected faults first, then the per-mailbox
throttle (the `{u}` path segment, UPN and id resolve to the same mailbox), then the handler;
a `GraphError` becomes Graph's error body with `innerError` ids. `$batch` replays its inner
requests through this same app, so they count and throttle like any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from contactsync.emulators.common.counters import CountingMiddleware, RequestCounters
from contactsync.emulators.common.faults import FaultInjector, FaultSpec
from contactsync.emulators.common.throttle import Budget, Throttle

from .config import GraphEmulatorConfig, SeedSpec
from .delta import DeltaTracker
from .model import GraphError, new_guid
from .routes import Handler, ServiceRoutes, json_response
from .state import GraphState
from .subscriptions import Notifier, SubscriptionStore

T = TypeVar("T")

_FAULT_CODES = {
    # A whole $batch may fail with 424 or 429 (learn.microsoft.com/graph/throttling,
    # "Throttling and batching"): inject either on route "$batch".
    424: "FailedDependency",
    429: "TooManyRequests",
    500: "generalException",
    502: "badGateway",
    503: "serviceNotAvailable",
    504: "gatewayTimeout",
}


def error_response(err: GraphError, request: Request) -> Response:
    rid = new_guid()
    crid = request.headers.get("client-request-id") or rid
    body = {
        "error": {
            "code": err.code,
            "message": err.message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": rid,
                "client-request-id": crid,
            },
        }
    }
    headers = {"request-id": rid, "client-request-id": crid, **err.headers}
    return json_response(body, err.status, headers)


class _CollapseSlashes:
    """`/v1.0//users` (a trailing-slash base URL, reference 5.3) routes like `/v1.0/users`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            path = scope["path"]
            while "//" in path:
                path = path.replace("//", "/")
            scope = dict(scope, path=path, raw_path=path.encode())
        await self.app(scope, receive, send)


class GraphEmulator:
    """State, faults, throttle and counters of one emulated tenant, plus Python helpers.

    The helpers and the admin API give contact ids in the immutable form (the product's) and
    accept either form.

    The helpers can be called from any thread: once the app runs, they hop onto its event
    loop, where all state lives.
    """

    def __init__(self, config: GraphEmulatorConfig | None = None) -> None:
        self.config = config or GraphEmulatorConfig()
        self.state = GraphState(self.config)
        self.delta = DeltaTracker(self.state)
        self.notifier = Notifier(self.config)
        self.subs = SubscriptionStore(self.config, self.state, self.notifier)
        self.faults = FaultInjector()
        self.throttle = Throttle(
            Budget(
                self.config.mailbox_max_concurrent,
                self.config.mailbox_max_requests,
                self.config.mailbox_window_seconds,
            )
        )
        self.counters = RequestCounters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.app = self._build()
        self.asgi: ASGIApp = self.app  # what $batch replays inner requests through

    # ---- assembly ----------------------------------------------------------------------------
    def _guard(self, handler: Handler, mailbox: bool = True) -> Handler:
        async def endpoint(request: Request) -> Response:
            principal = None
            try:
                if mailbox:
                    principal = self.state.user(request.path_params["u"]).id
                    self._admit(principal)  # raises 429; admitted requests hold a slot
                try:
                    # Injected latency sleeps while holding the mailbox slot, as slow work does.
                    fault = await self.faults.apply(request.method, request.url.path)
                    if fault is not None and fault.kind != "drop_response":
                        retry = {"Retry-After": str(fault.retry_after or 1)}
                        raise GraphError(
                            fault.status,
                            _FAULT_CODES.get(fault.status, "generalException"),
                            "Injected fault.",
                            retry if fault.status in (429, 503) else {},
                        )
                    response = await handler(request)
                finally:
                    if principal is not None:
                        self.throttle.release(principal)
                if fault is not None:  # drop_response: the change landed, the answer is lost
                    raise GraphError(
                        fault.status,
                        _FAULT_CODES.get(fault.status, "generalException"),
                        "Injected fault: the response was lost after the change was applied.",
                    )
            except GraphError as err:
                return error_response(err, request)
            crid = request.headers.get("client-request-id")
            response.headers["request-id"] = new_guid()
            if crid:
                response.headers["client-request-id"] = crid
            return response

        return endpoint

    def _admit(self, principal: str) -> None:
        wait = self.throttle.try_acquire(principal)
        if wait is None:
            return
        usage = self.throttle._usage.get(principal)  # peek: which limit refused us
        concurrent = usage is not None and usage.in_flight >= self.throttle.budget.max_concurrent
        code, msg = (
            ("ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
            if concurrent
            else ("TooManyRequests", "Please retry again later.")
        )
        raise GraphError(429, code, msg, {"Retry-After": str(int(wait))})

    def _build(self) -> Starlette:
        from .admin import admin_routes  # admin imports this module's types

        r = ServiceRoutes(self)
        g = self._guard
        u = "/v1.0/users/{u}"
        fc = u + "/contactFolders/{f}/contacts"
        routes = [
            Route("/v1.0/users", g(r.list_users, False), methods=["GET"]),
            Route(
                "/v1.0/me{rest:path}", g(r.me, False), methods=["GET", "POST", "PATCH", "DELETE"]
            ),
            Route(u, g(r.get_user), methods=["GET"]),
            Route(u + "/contactFolders", g(r.list_folders), methods=["GET"]),
            Route(u + "/contactFolders", g(r.create_folder), methods=["POST"]),
            Route(u + "/contactFolders/{f}", g(r.get_folder), methods=["GET"]),
            Route(u + "/contactFolders/{f}", g(r.update_folder), methods=["PATCH"]),
            Route(u + "/contactFolders/{f}", g(r.delete_folder), methods=["DELETE"]),
            Route(u + "/contactFolders/{f}/childFolders", g(r.list_folders), methods=["GET"]),
            Route(u + "/contactFolders/{f}/childFolders", g(r.create_folder), methods=["POST"]),
            Route(fc + "/delta", g(r.delta), methods=["GET"]),
            Route(fc + "/delta()", g(r.delta), methods=["GET"]),
            Route(fc, g(r.list_contacts), methods=["GET"]),
            Route(fc, g(r.create_contact), methods=["POST"]),
            Route(fc + "/{c}", g(r.get_contact), methods=["GET"]),
            Route(fc + "/{c}", g(r.update_contact), methods=["PATCH"]),
            Route(fc + "/{c}", g(r.delete_contact), methods=["DELETE"]),
            Route(fc + "/{c}/permanentDelete", g(r.delete_contact), methods=["POST"]),
            Route(u + "/contacts", g(r.list_contacts), methods=["GET"]),
            Route(u + "/contacts", g(r.create_contact), methods=["POST"]),
            Route(u + "/contacts/{c}", g(r.get_contact), methods=["GET"]),
            Route(u + "/contacts/{c}", g(r.update_contact), methods=["PATCH"]),
            Route(u + "/contacts/{c}", g(r.delete_contact), methods=["DELETE"]),
            Route(u + "/contacts/{c}/permanentDelete", g(r.delete_contact), methods=["POST"]),
            Route("/v1.0/subscriptions", g(r.list_subscriptions, False), methods=["GET"]),
            Route("/v1.0/subscriptions", g(r.create_subscription, False), methods=["POST"]),
            Route("/v1.0/subscriptions/{sid}", g(r.get_subscription, False), methods=["GET"]),
            Route("/v1.0/subscriptions/{sid}", g(r.renew_subscription, False), methods=["PATCH"]),
            Route("/v1.0/subscriptions/{sid}", g(r.delete_subscription, False), methods=["DELETE"]),
            Route(
                "/v1.0/subscriptions/{sid}/reauthorize",
                g(r.reauthorize_subscription, False),
                methods=["POST"],
            ),
            Route("/v1.0/$batch", g(r.batch, False), methods=["POST"]),
            *admin_routes(self),
        ]
        app = Starlette(routes=routes, lifespan=self._lifespan)

        async def not_found(request: Request, exc: Exception) -> Response:
            status = getattr(exc, "status_code", 404)
            code = "BadRequest" if status == 405 else "ResourceNotFound"
            return error_response(
                GraphError(status, code, "Resource not found for the segment."), request
            )

        app.add_exception_handler(404, not_found)
        app.add_exception_handler(405, not_found)
        app.add_middleware(CountingMiddleware, counters=self.counters)
        app.add_middleware(_CollapseSlashes)
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        worker = asyncio.create_task(self.notifier.run())
        try:
            yield
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            self._loop = None
            self._loop_thread = None

    # ---- thread hopping ----------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server loop (where state lives), or here if no server runs."""
        loop = self._loop
        if loop is None or not loop.is_running() or threading.get_ident() == self._loop_thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=30)

    # ---- Python helpers (the same operations as the admin API) -------------------------------
    def add_user(self, upn: str, display_name: str | None = None) -> dict[str, Any]:
        return self._call(lambda: self.state.add_user(upn, display_name).to_json())

    def user_id(self, user: str) -> str:
        return self._call(lambda: self.state.user(user).id)

    def create_folder(self, user: str, name: str, parent_id: str | None = None) -> str:
        return self._call(
            lambda: self.state.create_folder(self.state.user(user), name, parent_id).id
        )

    def seed(self, spec: SeedSpec | None = None, **kwargs: Any) -> dict[str, Any]:
        from .admin import seed

        spec = spec or SeedSpec(**kwargs)
        return self._call(lambda: seed(self, spec))

    def person_create_contact(
        self, user: str, folder_id: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Act as a person in Outlook: the change is notified like any other."""

        def run() -> dict[str, Any]:
            u = self.state.user(user)
            folder = self.state.folder(u, folder_id or u.root_folder_id)
            return self.state.create_contact(u, folder, body).view(None, None, immutable=True)

        return self._call(run)

    def person_update_contact(
        self, user: str, contact_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._call(
            lambda: self.state.update_contact(self.state.user(user), contact_id, body).view(
                None, None
            )
        )

    def person_delete_contact(self, user: str, contact_id: str) -> None:
        self._call(lambda: self.state.delete_contact(self.state.user(user), contact_id))

    def contacts(self, user: str, folder_id: str | None = None) -> list[dict[str, Any]]:
        """Every contact of a folder, with its extended properties under `_ext` (for tests)."""

        def run() -> list[dict[str, Any]]:
            u = self.state.user(user)
            f = self.state.folder(u, folder_id or u.root_folder_id)
            return [
                c.view(None, None, immutable=True) | {"_ext": {i: v for i, v in c.ext.values()}}
                for c in self.state.iter_contacts(f, f.order())
            ]

        return self._call(run)

    def add_fault(self, spec: FaultSpec | None = None, **kwargs: Any) -> None:
        f = spec or FaultSpec(**kwargs)
        self._call(lambda: self.faults.add(f))

    def clear_faults(self) -> None:
        self._call(self.faults.clear)

    def throttle_storm(self, user: str, seconds: float) -> None:
        """Answer 429 to every request of `user` ("*" = all mailboxes) for `seconds`."""

        def run() -> None:
            key = user if user == "*" else self.state.user(user).id
            self.throttle.force(key, seconds)

        self._call(run)

    def drop_notifications(self, n: int) -> None:
        def run() -> None:
            self.notifier.drop_next += n

        self._call(run)

    def duplicate_notifications(self, n: int) -> None:
        def run() -> None:
            self.notifier.duplicate_next += n

        self._call(run)

    def notification_stats(self) -> dict[str, Any]:
        return self._call(
            lambda: dict(vars(self.notifier.stats), log=list(self.notifier.stats.log))
        )

    def expire_delta_tokens(
        self, user: str | None = None, folder_id: str | None = None, status: int | None = None
    ) -> int:
        """Forget delta tokens; `status` (400, 404 or 410, the default) is what using one
        answers from now on, always with code syncStateNotFound."""
        return self._call(
            lambda: self.delta.expire(
                self.state.user(user).id if user else None, folder_id, status
            )
        )

    def send_lifecycle(self, subscription_id: str, event: str) -> bool:
        return self._call(lambda: self.subs.lifecycle(subscription_id, event))

    def remove_subscription(self, subscription_id: str, notify: bool = False) -> bool:
        """Delete a subscription behind the client's back (optionally telling it)."""

        def run() -> bool:
            if notify and subscription_id in self.subs.subs:
                self.subs.lifecycle(subscription_id, "subscriptionRemoved")
                return True
            return self.subs.remove(subscription_id) is not None

        return self._call(run)

    def subscriptions(self) -> list[dict[str, Any]]:
        return self._call(lambda: [s.snapshot() for s in self.subs.subs.values()])

    def counters_snapshot(self) -> dict[str, Any]:
        return self._call(self.counters.snapshot)

    def reset_counters(self) -> None:
        self._call(self.counters.reset)

    def save_snapshot(self, path: str) -> None:
        self._call(lambda: self.state.save(path))

    def load_snapshot(self, path: str) -> None:
        def run() -> None:
            self.state.load(path)
            self.delta.expire()

        self._call(run)

    def reset(self) -> None:
        """Empty mailboxes, subscriptions, faults, tokens and counters."""

        def run() -> None:
            self.state.load_json({"users": [], "folders": [], "contacts": []})
            self.subs.clear()
            self.delta.expire()
            self.faults.clear()
            self.counters.reset()

        self._call(run)


def create_graph_app(
    config: GraphEmulatorConfig | None = None, emulator: GraphEmulator | None = None
) -> Starlette:
    """The ASGI app; `app.state.emulator` is its `GraphEmulator`."""
    emu = emulator or GraphEmulator(config)
    emu.app.state.emulator = emu
    return emu.app
