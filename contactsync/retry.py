"""The one retry policy: jittered exponential backoff as pure functions (the random source is a
parameter, so they are tested without sleeping). The HTTP clients retry a request with it
(`contactsync.clients.resilience.retrying`, bounded by `max_attempts`); the Kafka worker retries
a handler's group with it (bounded by `timeout`, its budget in seconds)."""

from __future__ import annotations

from dataclasses import dataclass

from contactsync.errors import server_retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    `max_attempts` counts the first try; `timeout` (None: no bound) is the total time the worker
    spends on one group before it dead-letters it. Backoff for retry n (0-based) is
    `min(max_delay, base_delay * multiplier**n)`, then "full jitter" scaled by `jitter`
    (1.0 = uniform in [0, d], 0.0 = exactly d). A Retry-After the service sent is used instead
    of the backoff (never less than it); one longer than `max_retry_after` is not waited out:
    the error is raised so the caller can defer the work instead of blocking.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 1.0
    max_retry_after: float = 300.0
    timeout: float | None = None

    @classmethod
    def fast(cls, max_attempts: int = 5) -> RetryPolicy:
        """Millisecond delays, for tests."""
        return cls(max_attempts=max_attempts, base_delay=0.001, max_delay=0.01)


# The Kafka worker's: a minute per group, however many attempts fit in it.
WORKER_RETRY = RetryPolicy(max_attempts=1_000, base_delay=0.3, max_delay=10.0, timeout=60.0)


def backoff_delay(policy: RetryPolicy, retry_number: int, rand: float) -> float:
    """Delay before retry `retry_number` (0-based); `rand` is uniform in [0, 1)."""
    ceiling = min(policy.max_delay, policy.base_delay * policy.multiplier ** max(0, retry_number))
    jitter = min(1.0, max(0.0, policy.jitter))
    return ceiling * (1.0 - jitter) + ceiling * jitter * rand


def retry_delay(
    policy: RetryPolicy, retry_number: int, error: BaseException, rand: float
) -> float | None:
    """Seconds to wait before retrying after `error`, or None if we should give up now."""
    if retry_number + 1 >= policy.max_attempts:
        return None
    asked = server_retry_after(error)  # a 429's, or a 503's (Graph and BC send one too)
    if asked is not None:
        if asked > policy.max_retry_after:
            return None
        # Honour Retry-After; add a little jitter so a herd of waiters does not re-arrive at once.
        return asked + backoff_delay(policy, 0, rand) * 0.1
    return backoff_delay(policy, retry_number, rand)
