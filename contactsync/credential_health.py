"""How the process's Azure credential is doing, per scope (`graph`, `bc`): for readiness,
metrics and logs.

A refused credential (`CredentialRejected`) stops every role that needs a token until it is
fixed; that must be loud but not a flood: one error line per scope per minute, the readiness
component `<scope>_credentials` failing (so `/readyz` answers 503 and
`contactsync_component_ready{component="<scope>_credentials"}` is 0), and
`contactsync_credential_failures_total{service="<scope>"}` counting every failed try. A
transient failure is counted and logged (a warning per minute) but leaves readiness alone:
the roles retry with backoff.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from contactsync import metrics
from contactsync.clients.errors import CREDENTIAL_FAILURES, CredentialRejected, ServiceError
from contactsync.health import READINESS
from contactsync.logs import get_logger

LOG_EVERY_S = 60.0
CREDENTIAL_PAUSE_S = 15.0  # between two tries of a failing credential
T = TypeVar("T")


def _log() -> Any:
    return get_logger("contactsync.credentials")


@dataclass
class _ScopeState:
    refused: str = ""  # the sentence of the last refusal; "" while tokens come
    last_logged: float = float("-inf")


class CredentialHealth:
    def __init__(self) -> None:
        self._states: dict[str, _ScopeState] = {}
        self._lock = threading.Lock()
        # A one-shot command says it in its one sentence; roles (and embedders) log it.
        self.log_failures = True

    def succeeded(self, scope: str) -> None:
        with self._lock:
            state = self._states.setdefault(scope, _ScopeState())
            recovered = bool(state.refused)
            state.refused = ""
        if recovered:
            READINESS.report(f"{scope}_credentials", True, f"{scope} token issued")
            _log().info("Azure credential accepted again", scope=scope)

    def failed(self, scope: str, error: ServiceError) -> None:
        refused = isinstance(error, CredentialRejected)
        metrics.CREDENTIAL_FAILURES.labels(scope).inc()
        now = time.monotonic()
        with self._lock:
            state = self._states.setdefault(scope, _ScopeState())
            if refused:
                state.refused = str(error)
            due = now - state.last_logged >= LOG_EVERY_S
            if due:
                state.last_logged = now
        if refused:
            READINESS.report(f"{scope}_credentials", False, f"not accepted: {error}")
        if due and self.log_failures:
            log = _log().error if refused else _log().warning
            log("Azure credential failed; work that needs it waits", scope=scope,
                error=str(error))

    def refused(self) -> dict[str, str]:
        """Scope -> why, for every scope whose credential is refused right now."""
        with self._lock:
            return {scope: s.refused for scope, s in self._states.items() if s.refused}

    def readiness(self) -> tuple[bool, str]:
        refused = self.refused()
        if not refused:
            return True, "credential ok"
        return False, "; ".join(refused.values())

    def reset(self) -> None:
        """Forget every scope's state (a test starting over in the same process)."""
        with self._lock:
            self._states.clear()


HEALTH = CredentialHealth()  # one per process: every role's clients share it


def when_credential_works(open_: Callable[[], T], stop: threading.Event,
                          pause: float = CREDENTIAL_PAUSE_S) -> T | None:
    """`open_()` (a role opening its clients), tried again every `pause` seconds while the
    credential fails; None if `stop` is set meanwhile. The role stays up, idle and not ready,
    instead of dying (and taking the other roles of its process with it)."""
    while True:
        try:
            return open_()
        except CREDENTIAL_FAILURES:  # logged once a minute by HEALTH
            if stop.wait(pause):
                return None
