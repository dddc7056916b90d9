"""contactsync.clients.resilience: pure backoff functions, the retry helper's rules for
non-idempotent calls, and the client-side request budget (with a fake clock)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contactsync.clients.errors import Invalid, ServiceUnavailable, Throttled
from contactsync.clients.resilience import (
    BudgetLimits,
    RequestBudget,
    RetryPolicy,
    backoff_delay,
    retry_delay,
    retrying,
)


@given(st.integers(min_value=0, max_value=50), st.floats(min_value=0, max_value=0.999999))
def test_backoff_is_bounded_and_grows(retry: int, rand: float) -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30, jitter=1.0)
    d = backoff_delay(policy, retry, rand)
    assert 0 <= d <= min(30, 0.5 * 2**retry)
    no_jitter = RetryPolicy(base_delay=0.5, max_delay=30, jitter=0.0)
    assert backoff_delay(no_jitter, retry, rand) == min(30, 0.5 * 2**retry)


def test_retry_delay_honours_retry_after_and_limits() -> None:
    policy = RetryPolicy(max_attempts=3, max_retry_after=60)
    assert retry_delay(policy, 0, Throttled("x", retry_after=10), 0.0) == 10
    assert 10 <= retry_delay(policy, 0, Throttled("x", retry_after=10), 0.99) <= 10.1  # type: ignore[operator]
    assert retry_delay(policy, 0, Throttled("x", retry_after=61), 0.5) is None
    assert retry_delay(policy, 2, ServiceUnavailable("x"), 0.5) is None  # out of attempts


class Flaky:
    def __init__(self, errors: list[Exception], result: str = "ok") -> None:
        self.errors = errors
        self.calls = 0
        self.result = result

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


async def no_sleep(_: float) -> None:
    return None


async def test_idempotent_calls_retry_retryable_errors_only() -> None:
    call = Flaky([ServiceUnavailable("a"), Throttled("b", retry_after=0)])
    assert await retrying(call, RetryPolicy(), is_idempotent=True, sleep=no_sleep) == "ok"
    assert call.calls == 3
    bad = Flaky([Invalid("nope")])
    with pytest.raises(Invalid):
        await retrying(bad, RetryPolicy(), is_idempotent=True, sleep=no_sleep)
    assert bad.calls == 1
    never = Flaky([ServiceUnavailable(str(i)) for i in range(10)])
    with pytest.raises(ServiceUnavailable):
        await retrying(never, RetryPolicy(max_attempts=4), is_idempotent=True, sleep=no_sleep)
    assert never.calls == 4


async def test_non_idempotent_ambiguous_failure_is_not_repeated_blindly() -> None:
    call = Flaky([ServiceUnavailable("timeout")])
    with pytest.raises(ServiceUnavailable):
        await retrying(call, RetryPolicy(), is_idempotent=False, sleep=no_sleep)
    assert call.calls == 1

    # 429 and "not sent" are refusals before any work: safe to repeat.
    call = Flaky([Throttled("t", retry_after=0), ServiceUnavailable("c", code="NotSent")])
    assert await retrying(call, RetryPolicy(), is_idempotent=False, sleep=no_sleep) == "ok"
    assert call.calls == 3


async def test_non_idempotent_checks_before_repeating() -> None:
    applied = Flaky([ServiceUnavailable("lost answer")])

    async def found() -> str | None:
        return "existing"

    assert await retrying(applied, RetryPolicy(), is_idempotent=False, find_existing=found,
                          sleep=no_sleep) == "existing"
    assert applied.calls == 1

    not_applied = Flaky([ServiceUnavailable("503")])

    async def nothing() -> str | None:
        return None

    seen: list[int] = []
    assert await retrying(not_applied, RetryPolicy(), is_idempotent=False, find_existing=nothing,
                          sleep=no_sleep, on_retry=lambda n, e, d: seen.append(n)) == "ok"
    assert not_applied.calls == 2 and seen == [1]


async def test_retrying_sleeps_for_retry_after() -> None:
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    call = Flaky([Throttled("t", retry_after=7)])
    await retrying(call, RetryPolicy(), is_idempotent=True, sleep=sleep, rng=random.Random(1))
    assert 7 <= slept[0] <= 7.1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_budget_window_waits_instead_of_failing() -> None:
    clock = FakeClock()
    budget = RequestBudget(BudgetLimits(5, 3, 10.0), clock=clock, sleep=clock.sleep)
    for _ in range(3):
        async with budget.slot("u"):
            pass
    assert clock.now == 0
    async with budget.slot("u"):
        pass
    assert clock.now == pytest.approx(10.0, abs=0.01)  # waited for the oldest to leave
    async with budget.slot("other"):  # other principals are independent
        pass
    assert clock.now == pytest.approx(10.0, abs=0.01)


async def test_batch_inner_requests_count_against_the_window() -> None:
    clock = FakeClock()
    budget = RequestBudget(BudgetLimits(4, 20, 60.0), clock=clock, sleep=clock.sleep)
    await budget.charge("mailbox", 19)  # a $batch's 20 inner requests, one with a slot
    async with budget.slot("mailbox"):
        pass
    assert budget.in_window("mailbox") == 20 and clock.now == 0
    clock.now = 30.0
    await budget.charge("mailbox", 5)  # the window is full until the first 20 leave it
    assert clock.now == pytest.approx(60.0, abs=0.01)
    assert budget.in_window("mailbox") == 5


async def test_budget_concurrency_and_pause() -> None:
    budget = RequestBudget(BudgetLimits(2, 1000, 60))
    active = 0
    peak = 0

    async def work() -> None:
        nonlocal active, peak
        async with budget.slot("u"):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(work() for _ in range(8)))
    assert peak == 2

    clock = FakeClock()
    paused = RequestBudget(BudgetLimits(), clock=clock, sleep=clock.sleep)
    paused.pause("u", 3.0)
    async with paused.slot("u"):
        pass
    assert clock.now == pytest.approx(3.0)


def test_invalid_limits_rejected() -> None:
    with pytest.raises(ValueError):
        RequestBudget(BudgetLimits(0, 1, 1))


async def test_budget_never_admits_more_than_the_window_allows_under_bursts() -> None:
    """The window is counted in slices (a hundredth of it each): whatever the pattern of
    requests, no stretch of `window_seconds` ever holds more admissions than the limit."""
    clock = FakeClock()
    limits = BudgetLimits(8, 50, 100.0)
    budget = RequestBudget(limits, clock=clock, sleep=clock.sleep)
    rng = random.Random(7)
    admitted: list[float] = []
    for _ in range(400):
        clock.now += rng.choice([0.0, 0.05, 0.3, 2.0, 7.5])
        size = rng.choice([1, 1, 1, 5, 19])
        if size == 1:
            async with budget.slot("mailbox"):
                admitted.append(clock.now)
        else:
            await budget.charge("mailbox", size)
            admitted.extend([clock.now] * size)
    for i, start in enumerate(admitted):
        inside = sum(1 for t in admitted[i:] if t < start + limits.window_seconds)
        assert inside <= limits.max_requests, f"{inside} requests within 100 s from t={start}"
    # It waited (the limit bound), and not far beyond what per-request stamps would allow.
    assert clock.now < len(admitted) / limits.max_requests * limits.window_seconds * 1.2
