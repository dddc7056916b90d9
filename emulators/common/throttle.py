"""Per-principal request budgets, as the real services enforce them.

Graph: 4 concurrent requests and 10,000 per 10 minutes per mailbox. BC: 5 concurrent and 6,000
per 5 minutes per principal. Over either limit the service answers 429 with Retry-After; this
class decides that, the emulator's route turns it into the service's own error body.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field


@dataclass
class Budget:
    max_concurrent: int
    max_requests: int
    window_seconds: float


@dataclass
class _Usage:
    in_flight: int = 0
    stamps: deque[float] = field(default_factory=deque)


class Throttle:
    """Admission control keyed by principal (mailbox, BC principal). Not thread-safe: one loop."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._usage: dict[str, _Usage] = defaultdict(_Usage)
        # Injected "429 storms": principal ("*" = everyone) -> until (monotonic seconds).
        self._forced_until: dict[str, float] = {}

    def force(self, principal: str, seconds: float) -> None:
        self._forced_until[principal] = time.monotonic() + seconds

    def try_acquire(self, principal: str) -> float | None:
        """Admit a request (returns None) or refuse it (returns Retry-After seconds, >= 1)."""
        now = time.monotonic()
        for key in (principal, "*"):
            until = self._forced_until.get(key)
            if until is not None:
                if until > now:
                    return max(1.0, math.ceil(until - now))
                del self._forced_until[key]
        usage = self._usage[principal]
        window_start = now - self.budget.window_seconds
        while usage.stamps and usage.stamps[0] <= window_start:
            usage.stamps.popleft()
        if usage.in_flight >= self.budget.max_concurrent:
            return 1.0
        if len(usage.stamps) >= self.budget.max_requests:
            return max(1.0, math.ceil(usage.stamps[0] + self.budget.window_seconds - now))
        usage.in_flight += 1
        usage.stamps.append(now)
        return None

    def release(self, principal: str) -> None:
        usage = self._usage[principal]
        usage.in_flight = max(0, usage.in_flight - 1)
