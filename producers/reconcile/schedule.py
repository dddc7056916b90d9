"""When the reconcile runs (`reconcile_schedule`), and the scheduler role that fires at each slot.

A schedule is `off`, `every N[s|m|h|d]` (aligned to the epoch, so restarts keep the same slots),
or a cron spec read by cronsim: five fields with named days and months (`30 3 * * mon-fri`,
`0 2 1 jan,jul *`) or an alias (`@daily`, `@hourly`, `@weekly`, `@monthly`, `@yearly`;
`nightly` is 02:00). A cron spec may end with an IANA time zone (`0 2 * * * Europe/Berlin`);
without one it is UTC. A spec that cannot be read is one sentence naming what is expected.

The scheduler fires at each slot and spreads the enabled users over `reconcile_jitter` seconds
(one random order, one random point in each user's share of the window), so the users do not
all hit Graph and BC at once. Each slot's run id is derived from the slot, and each command's
event id from the run id and the user: a run published twice (a restarted scheduler) is
recognisable. Run ONE scheduler (like bc-changes and subscriptions); a scheduler stopped inside
a window leaves the rest of that run unpublished, and the next slot covers those users.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from contactsync.logs import get_logger
from contactsync.producers.reconcile.publisher import CommandPublisher, reconcile_command
from contactsync.settings import Settings
from contactsync.store import Store
from contactsync.sync.run_ids import new_run_id
from contactsync.sync.services import ConfigError

NIGHTLY = "0 2 * * *"  # 02:00 (UTC unless a zone is named)
# The usual cron aliases (cronsim reads five fields only).
ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *", "nightly": NIGHTLY, "@nightly": NIGHTLY, "daily": NIGHTLY,
           "hourly": "0 * * * *"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EXPECTED = ("use nightly, hourly, @daily (or another @alias), every N[s|m|h|d], a cron spec of "
             "5 fields such as `30 3 * * mon-fri` (minute hour day month weekday), optionally "
             "followed by a time zone such as Europe/Berlin, or off")


def _log() -> Any:
    return get_logger("contactsync.reconcile")


class ScheduleError(ConfigError):
    """A `reconcile_schedule` that cannot be read; the message says what is expected."""


@dataclass(frozen=True)
class Schedule:
    """When reconcile runs: every `interval` seconds, at the slots of `cron` in `zone`, or never
    (`off`)."""

    text: str
    interval: float | None = None
    cron: str | None = None  # five fields, as cronsim reads them
    zone: tzinfo = UTC

    def next_after(self, now: datetime) -> datetime | None:
        """The first slot strictly after `now` (in UTC); None when the schedule is off."""
        now = now.astimezone(UTC)
        if self.interval is not None:
            slots = int(now.timestamp() // self.interval) + 1
            return datetime.fromtimestamp(slots * self.interval, UTC)
        if self.cron is None:
            return None
        local = now.astimezone(self.zone).replace(second=0, microsecond=0)
        try:  # cronsim yields slots strictly after its start (seconds dropped above)
            return next(CronSim(self.cron, local)).astimezone(UTC)
        except StopIteration:  # e.g. "0 0 30 2 *": never
            return None


def _zone(name: str, text: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"reconcile schedule {text!r}: unknown time zone {name!r}; "
                            "use an IANA name such as Europe/Berlin, or UTC") from None


def parse_schedule(text: str) -> Schedule:
    """`off`, `every N[s|m|h|d]`, an alias (`nightly`, `@daily`, ...) or a 5-field cron spec,
    each cron form optionally followed by a time zone; see the module's docstring."""
    spec = " ".join(text.split())
    lowered = spec.lower()
    if lowered in ("off", "never", "none", ""):
        return Schedule(text)
    every = re.fullmatch(r"every\s+(\d+(?:\.\d+)?)\s*([smhd]?)", lowered)
    if every:
        seconds = float(every.group(1)) * _UNITS[every.group(2) or "s"]
        if seconds <= 0:
            raise ScheduleError(f"reconcile schedule {text!r}: the interval must be positive")
        return Schedule(text, interval=seconds)
    if lowered.startswith("every"):
        raise ScheduleError(f"reconcile schedule {text!r}: expected `every N` with s, m, h or d")
    fields = spec.split(" ")
    zone: tzinfo = UTC
    if len(fields) in (2, 6):  # an alias or five fields, then the zone
        zone = _zone(fields[-1], text)
        fields = fields[:-1]
    cron = ALIASES.get(fields[0].lower(), "") if len(fields) == 1 else " ".join(fields)
    if len(cron.split(" ")) != 5:
        raise ScheduleError(f"reconcile schedule {text!r} is not understood: {_EXPECTED}")
    try:
        CronSim(cron, datetime.now(UTC))
    except CronSimError as exc:  # "Bad day-of-week": which field
        raise ScheduleError(f"reconcile schedule {text!r}: {str(exc).lower()} field; "
                            f"{_EXPECTED}") from None
    return Schedule(text, cron=cron, zone=zone)


# --- spreading ---

def spread(user_ids: Iterable[str], window: float,
           rng: random.Random | None = None) -> list[tuple[float, str]]:
    """(offset in seconds, user) for each user, by offset: a random order, and a random point in
    each user's equal share of the window, so no two users start together by construction."""
    rng = rng or random.Random()
    users = list(dict.fromkeys(user_ids))
    rng.shuffle(users)
    share = window / len(users) if users else 0.0
    return [((i + rng.random()) * share, user) for i, user in enumerate(users)]


# --- the scheduler role ---

class Scheduler:
    """The reconcile role: at each slot, one full_sync command per enabled user, spread."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        schedule: Schedule | None = None,
        jitter: float | None = None,
        publisher: CommandPublisher | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.schedule = schedule or parse_schedule(settings.reconcile_schedule)
        self.jitter = settings.reconcile_jitter if jitter is None else jitter
        self.publisher = publisher or CommandPublisher(settings)
        self.rng = rng or random.Random()
        self.clock = clock
        self.published = 0  # commands published, for logs and tests

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                slot = self.schedule.next_after(datetime.fromtimestamp(self.clock(), UTC))
                if slot is None:
                    _log().info("reconcile schedule is off", schedule=self.schedule.text)
                    stop.wait()
                    return
                _log().info("next reconcile", at=slot.isoformat())
                if self._wait_until(slot.timestamp(), stop):
                    self.run_slot(slot, stop)
        finally:
            self.publisher.close()

    def run_slot(self, slot: datetime, stop: threading.Event) -> str:
        """Publish the slot's run: each enabled user at its point of the window. Returns the
        run id. A user disabled before its turn is left out."""
        run_id = new_run_id("scheduled", slot, unique=False)
        users = [s.user_id for s in self.store.setups.list_all() if s.syncs]
        plan = spread(users, self.jitter, self.rng)
        _log().info("reconcile run", run_id=run_id, users=len(plan), window_s=self.jitter)
        for offset, user_id in plan:
            if not self._wait_until(slot.timestamp() + offset, stop):
                _log().warning("reconcile run stopped before every user was published",
                               run_id=run_id, published=self.published)
                break
            setup = self.store.setups.get(user_id)
            if setup is None or not setup.syncs:
                continue
            self.publisher.publish([reconcile_command(user_id, run_id, reason="schedule")])
            self.published += 1
        return run_id

    def _wait_until(self, when: float, stop: threading.Event) -> bool:
        """Sleep until `when` (epoch seconds); False if stopped first."""
        while not stop.is_set():
            remaining = when - self.clock()
            if remaining <= 0:
                return True
            stop.wait(min(remaining, 30.0))  # re-read the clock: sleeps drift
        return False


def run_scheduler(settings: Settings, store: Store, stop: threading.Event) -> None:
    Scheduler(settings, store).run(stop)
