"""Every role of the pipeline in one process: `contactsync run` and `contactsync sandbox`.

Each role runs in a thread of its own with one shared stop event; scale-out runs the same roles
as separate processes (`contactsync webhook|router|applier|bc-changes|subscriptions`). A role
that dies is reported and the others stop too: a half pipeline would silently lose work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contactsync.logs import get_logger
from contactsync.roles import ALL_ROLES as ALL_ROLES  # defined apart, for the CLI's start
from contactsync.settings import Settings
from contactsync.store import Store


@dataclass
class _Role:
    name: str
    run: Callable[[threading.Event], None]
    thread: threading.Thread | None = None
    error: BaseException | None = None


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    roles: tuple[str, ...] = ALL_ROLES
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 0
    metrics_port: int | None = None  # /healthz, /readyz, /metrics once for every role
    metrics_host: str = "0.0.0.0"
    console_port: int | None = None  # the admin console; 0: a free port
    console_host: str = "127.0.0.1"  # open without sign-in, so loopback unless one is set
    stop_event: threading.Event = field(default_factory=threading.Event)
    _roles: list[_Role] = field(default_factory=list)
    _webhook: Any = None
    _health: Any = None
    _console: Any = None
    _console_feed: Any = None

    @property
    def webhook_url(self) -> str:
        return self._webhook.url if self._webhook is not None else ""

    @property
    def health_url(self) -> str:
        return self._health.url if self._health is not None else ""

    @property
    def console_url(self) -> str:
        return f"{self._console.url}/" if self._console is not None else ""

    def start(self) -> None:
        """Start every role, once the topics' partitions have leaders serving them."""
        from contactsync.health import register_role_checks, serve_health
        from contactsync.kafka.topics import ALL_TOPICS, await_topics

        register_role_checks(self.settings.kafka_bootstrap_servers or None, self.store)
        if self.metrics_port is not None:
            self._health = serve_health(self.metrics_port, self.metrics_host)
        if set(self.roles) - {"webhook"}:  # the webhook alone starts without Kafka (503s)
            await_topics(self.settings, ALL_TOPICS)
        if "webhook" in self.roles:
            self._start_webhook()
        if self.console_port is not None:
            self._start_console()
        for name in self.roles:
            if name == "webhook":
                continue
            role = _Role(name, self._runner(name))
            role.thread = threading.Thread(target=self._guard, args=(role,), name=name,
                                           daemon=True)
            self._roles.append(role)
            role.thread.start()

    def _start_webhook(self) -> None:
        from contactsync.http_server import BackgroundServer
        from contactsync.producers.webhook import StoreRegistry, create_webhook_app

        app = create_webhook_app(self.settings, StoreRegistry(self.store))
        self._webhook = BackgroundServer(app, host=self.webhook_host,
                                         port=self.webhook_port).start()

    def _start_console(self) -> None:
        from contactsync.console.app import create_console_app
        from contactsync.console.results import ResultsFeed
        from contactsync.console.signin import SignInSettings
        from contactsync.http_server import BackgroundServer

        self._console_feed = ResultsFeed(self.settings)
        self._console_feed.start()
        app = create_console_app(self.settings, self.store, self._console_feed.view(),
                                 SignInSettings())
        self._console = BackgroundServer(app, host=self.console_host,
                                         port=self.console_port or 0).start()

    def _runner(self, name: str) -> Callable[[threading.Event], None]:
        if name == "router":
            from contactsync.consumers.router import Router

            return Router(self.settings, self.store).run
        if name == "applier":
            from contactsync.consumers.applier import Applier

            return Applier(self.settings, self.store).run
        if name == "bc-changes":
            from contactsync.producers.bc_changes import run_bc_changes

            return lambda stop: run_bc_changes(self.settings, self.store, stop)
        if name == "subscriptions":
            from contactsync.producers.subscriptions import run_subscriptions

            return lambda stop: run_subscriptions(self.settings, self.store, stop)
        if name == "reconcile":  # the scheduler; idle between slots
            from contactsync.producers.reconcile import run_scheduler

            return lambda stop: run_scheduler(self.settings, self.store, stop)
        raise ValueError(f"unknown role {name!r}; roles: {', '.join(ALL_ROLES)}")

    def _guard(self, role: _Role) -> None:
        try:
            role.run(self.stop_event)
        except BaseException as exc:  # reported, and everything stops
            role.error = exc
            get_logger("contactsync.pipeline").error("role failed", role=role.name,
                                                     error=exc)
            self.stop_event.set()

    @property
    def failed_roles(self) -> dict[str, BaseException]:
        return {r.name: r.error for r in self._roles if r.error is not None}

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        for role in self._roles:
            if role.thread is not None:
                role.thread.join(timeout)
        if self._webhook is not None:
            self._webhook.stop()
        if self._health is not None:
            self._health.stop()
        if self._console is not None:
            self._console.stop()
        if self._console_feed is not None:
            self._console_feed.stop()
        from contactsync.health import READINESS

        READINESS.clear()
