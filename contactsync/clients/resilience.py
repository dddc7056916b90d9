"""Client-side resilience shared by the Graph and Business Central clients.

Three pieces, usable on their own:

* `RequestBudget`: a per-principal *client-side* budget (max concurrent requests and max requests
  per sliding window). It awaits instead of failing, so we stay under the service's limits
  instead of discovering them through 429s (docs/architecture.md decision 10). `pause()` lets a
  429's Retry-After hold back every request of that principal, not just the one that got it.
* `RetryPolicy` + `backoff_delay()` / `retry_delay()` (defined in `contactsync.retry`, the one
  policy the Kafka worker uses too): jittered exponential backoff as pure functions.
* `retrying()`: runs an async call, retries `RetryableError`s per the policy, honours
  the Retry-After of a 429 or a 503, and never repeats a non-idempotent call after an
  *ambiguous* failure (the request may have been applied) unless the caller gives
  `find_existing` to check first.

Only `contactsync.clients.errors` types are interpreted here; HTTP stays in the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from contactsync.clients.errors import RetryableError, Throttled
from contactsync.retry import RetryPolicy as RetryPolicy  # the one policy, shared with the worker
from contactsync.retry import backoff_delay as backoff_delay
from contactsync.retry import retry_delay as retry_delay

log = logging.getLogger(__name__)
# One line per retry, at WARNING: a command waiting on a slow or hung service says so
# (the CLI prints this logger's lines as they are; roles log them).
retry_log = logging.getLogger("contactsync.retries")
_SERVICE_NAMES = {"bc": "BC", "graph": "Graph", "kafka": "Kafka"}

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


# --------------------------------------------------------------------------------------------
# Request budget
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetLimits:
    """Defaults are Business Central's (5 concurrent, 6,000 per 5 minutes per principal).
    Graph's per-mailbox limits are `BudgetLimits(4, 10_000, 600)`."""

    max_concurrent: int = 5
    max_requests: int = 6_000
    window_seconds: float = 300.0


BC_LIMITS = BudgetLimits(5, 6_000, 300.0)
GRAPH_MAILBOX_LIMITS = BudgetLimits(4, 10_000, 600.0)


# The window is counted in slices: admissions less than a hundredth of the window apart share
# one (time, count) entry instead of one timestamp each. Per-request stamps held 100,000 floats
# for the ten minutes of Graph's window after a Full sync, scattered across the heap, and they
# kept ~140 MB of freed listings from going back to the system (measured at 100,000 contacts).
SLICES_PER_WINDOW = 100


@dataclass(slots=True)
class _Slice:
    opened: float  # its first admission
    last: float  # its last admission: the whole slice leaves the window when this one does
    count: int


@dataclass
class _PrincipalState:
    sem: asyncio.Semaphore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    slices: deque[_Slice] = field(default_factory=deque)
    admitted: int = 0  # the slices' counts summed: requests within the window
    paused_until: float = 0.0


class RequestBudget:
    """Per-principal admission on the client side. One instance per event loop.

    `async with budget.slot(principal): ...` waits for a concurrency slot and a window slot.
    Waiters for the window are served in arrival order (the lock is held while sleeping).
    """

    def __init__(
        self,
        limits: BudgetLimits = BC_LIMITS,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if limits.max_concurrent < 1 or limits.max_requests < 1 or limits.window_seconds <= 0:
            raise ValueError(f"invalid budget limits: {limits}")
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._states: dict[str, _PrincipalState] = {}

    def _state(self, principal: str) -> _PrincipalState:
        state = self._states.get(principal)
        if state is None:
            state = _PrincipalState(sem=asyncio.Semaphore(self.limits.max_concurrent))
            self._states[principal] = state
        return state

    def pause(self, principal: str, seconds: float) -> None:
        """Hold back new requests of `principal` for `seconds` (e.g. a 429's Retry-After)."""
        state = self._state(principal)
        state.paused_until = max(state.paused_until, self._clock() + max(0.0, seconds))

    def in_window(self, principal: str) -> int:
        """Requests admitted for `principal` within the current window (for tests/metrics)."""
        state = self._state(principal)
        self._expire(state, self._clock())
        return state.admitted

    def _expire(self, state: _PrincipalState, now: float) -> None:
        start = now - self.limits.window_seconds
        while state.slices and state.slices[0].last <= start:
            state.admitted -= state.slices.popleft().count

    def _record(self, state: _PrincipalState, now: float, requests: int) -> None:
        newest = state.slices[-1] if state.slices else None
        width = self.limits.window_seconds / SLICES_PER_WINDOW
        if newest is not None and now - newest.opened < width:
            newest.last, newest.count = now, newest.count + requests
        else:
            state.slices.append(_Slice(now, now, requests))
        state.admitted += requests

    def _room_at(self, state: _PrincipalState, needed: int) -> float:
        """When `needed` more requests fit: once enough of the oldest slices left the window.
        A slice leaves with its last admission, so this is never earlier than per-request
        stamps would allow (at most a slice's width later)."""
        freed = 0
        for piece in state.slices:
            freed += piece.count
            if freed >= needed:
                return piece.last + self.limits.window_seconds
        return state.slices[-1].last + self.limits.window_seconds

    async def acquire(self, principal: str) -> None:
        state = self._state(principal)
        await state.sem.acquire()
        try:
            await self._admit(state, 1)
        except BaseException:
            state.sem.release()
            raise

    async def charge(self, principal: str, requests: int) -> None:
        """Count `requests` more against the window without a concurrency slot: the inner
        requests of a `$batch`, which the service throttles one by one."""
        if requests > 0:
            await self._admit(self._state(principal), requests)

    async def _admit(self, state: _PrincipalState, requests: int) -> None:
        requests = min(requests, self.limits.max_requests)
        async with state.lock:
            while True:
                now = self._clock()
                if state.paused_until > now:
                    await self._sleep(state.paused_until - now)
                    continue
                self._expire(state, now)
                room = self.limits.max_requests - state.admitted
                if room >= requests:
                    self._record(state, now, requests)
                    return
                await self._sleep(max(self._room_at(state, requests - room) - now, 0.001))

    def release(self, principal: str) -> None:
        self._state(principal).sem.release()

    @contextlib.asynccontextmanager
    async def slot(self, principal: str) -> AsyncIterator[None]:
        await self.acquire(principal)
        try:
            yield
        finally:
            self.release(principal)


# --------------------------------------------------------------------------------------------
# Retrying (the policy and its delays: contactsync.retry)
# --------------------------------------------------------------------------------------------


def default_is_ambiguous(error: RetryableError) -> bool:
    """Could the failed request have been applied by the service?

    A 429 is a refusal before any work, so it is safe to repeat. Anything else (5xx, timeout,
    a connection dropped mid-request) may have been applied. Clients that know a request never
    left (connect error) mark it with `code="NotSent"`.
    """
    return not (isinstance(error, Throttled) or error.code == "NotSent")


def retry_line(retry: int, retries: int, error: RetryableError, delay: float) -> str:
    """'BC not answering at URL (ReadTimeout ...), retry 2 of 4 in 8 s' (email masked)."""
    from contactsync.logs import redact_text

    who = _SERVICE_NAMES.get(error.service, error.service or "the service")
    where = f" at {redact_text(error.url)}" if error.url else ""
    if isinstance(error, Throttled):
        what = f"{who} is throttling (HTTP 429){where}"
    elif error.status is not None:
        what = f"{who} answered HTTP {error.status}{where}"
    elif error.code == "NotSent":
        what = f"{who} not reachable{where}"
    else:
        what = f"{who} not answering{where} ({error.args[0] if error.args else error.code})"
    wait = f"{delay:.1f}" if delay < 10 else f"{delay:.0f}"
    return f"{what}, retry {retry} of {retries} in {wait} s"


def _log_retry(policy: RetryPolicy) -> Callable[[int, RetryableError, float], None]:
    def report(retry: int, error: RetryableError, delay: float) -> None:
        retry_log.warning(retry_line(retry, policy.max_attempts - 1, error, delay))

    return report


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    is_idempotent: bool,
    find_existing: Callable[[], Awaitable[T | None]] | None = None,
    is_ambiguous: Callable[[RetryableError], bool] = default_is_ambiguous,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, RetryableError, float], None] | None = None,
) -> T:
    """Run `call()`, retrying `RetryableError`s as `policy` allows.

    Non-idempotent calls (a POST create) are retried only after unambiguous failures (429,
    not sent). After an ambiguous one, `find_existing()` is awaited (after the backoff, so the
    service has settled): if it finds the result, that is returned; if it returns None, the call
    is repeated. Without `find_existing` the ambiguous error is raised. Errors that are not
    `RetryableError` propagate at once. The last error is raised when attempts run out. If
    `find_existing` itself fails, that error propagates: without an answer we cannot safely
    repeat the call. Each retry is reported to `on_retry`, by default as a line on the
    `contactsync.retries` logger.
    """
    rand = rng.random if rng is not None else random.random
    on_retry = on_retry or _log_retry(policy)
    retry_number = 0
    while True:
        try:
            return await call()
        except RetryableError as error:
            delay = retry_delay(policy, retry_number, error, rand())
            ambiguous = not is_idempotent and is_ambiguous(error)
            if delay is None or (ambiguous and find_existing is None):
                raise
            on_retry(retry_number + 1, error, delay)
            log.debug(
                "retry %d after %s (%.3fs, ambiguous=%s)",
                retry_number + 1, type(error).__name__, delay, ambiguous,
            )
            await sleep(delay)
            retry_number += 1
            if ambiguous and find_existing is not None:
                found = await find_existing()
                if found is not None:
                    return found
