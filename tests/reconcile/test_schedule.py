"""The reconcile schedule (settings `reconcile_schedule`, `reconcile_jitter`) and the spread."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from contactsync.producers.reconcile import ScheduleError, parse_schedule, spread
from contactsync.settings import Settings

NOW = datetime(2026, 11, 26, 1, 30, 15, tzinfo=UTC)  # a Thursday


def test_the_default_is_nightly_at_two_utc_spread_over_an_hour():
    settings = Settings()
    assert (settings.reconcile_schedule, settings.reconcile_jitter) == ("nightly", 3600.0)
    schedule = parse_schedule(settings.reconcile_schedule)
    assert schedule.next_after(NOW) == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert schedule.next_after(datetime(2026, 11, 26, 2, 0, tzinfo=UTC)) == datetime(
        2026, 11, 27, 2, 0, tzinfo=UTC), "strictly after: a slot fires once"


@pytest.mark.parametrize(("text", "expected"), [
    ("every 6h", datetime(2026, 11, 26, 6, 0, tzinfo=UTC)),
    ("every 15m", datetime(2026, 11, 26, 1, 45, tzinfo=UTC)),
    ("hourly", datetime(2026, 11, 26, 2, 0, tzinfo=UTC)),
    ("*/20 * * * *", datetime(2026, 11, 26, 1, 40, tzinfo=UTC)),
    ("30 3 * * 1-5", datetime(2026, 11, 26, 3, 30, tzinfo=UTC)),
    ("0 4 * * 0", datetime(2026, 11, 29, 4, 0, tzinfo=UTC)),  # Sunday
    ("0 0 1 1 *", datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
])
def test_intervals_and_cron_specs_name_their_next_slot(text: str, expected: datetime):
    assert parse_schedule(text).next_after(NOW) == expected


def test_off_never_fires_and_bad_specs_say_what_is_expected():
    assert parse_schedule("off").next_after(NOW) is None
    for bad, words in (("every 5x", "every N"), ("0 25 * * *", "hour"),
                       ("0 2 * *", "5 fields"), ("a b c d e", "minute")):
        with pytest.raises(ScheduleError, match=words):
            parse_schedule(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("0 6 * * mon-fri", datetime(2026, 11, 26, 6, 0, tzinfo=UTC)),  # Thursday
    ("0 6 * * SAT,sun", datetime(2026, 11, 28, 6, 0, tzinfo=UTC)),
    ("0 0 1 jan *", datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
    ("@daily", datetime(2026, 11, 27, 0, 0, tzinfo=UTC)),
    ("@hourly", datetime(2026, 11, 26, 2, 0, tzinfo=UTC)),
    ("@weekly", datetime(2026, 11, 29, 0, 0, tzinfo=UTC)),  # Sunday midnight
    # 02:00 in Berlin is 01:00 UTC in November (CET, UTC+1): today's has passed.
    ("nightly Europe/Berlin", datetime(2026, 11, 27, 1, 0, tzinfo=UTC)),
    ("0 2 * * fri Europe/Berlin", datetime(2026, 11, 27, 1, 0, tzinfo=UTC)),
    ("@daily America/New_York", datetime(2026, 11, 26, 5, 0, tzinfo=UTC)),  # EST, UTC-5
    ("0 2 * * * UTC", datetime(2026, 11, 26, 2, 0, tzinfo=UTC)),
])
def test_named_days_aliases_and_time_zones_name_their_next_slot(text: str, expected: datetime):
    assert parse_schedule(text).next_after(NOW) == expected


def test_a_time_zone_keeps_local_time_across_daylight_saving():
    berlin = parse_schedule("30 3 * * * Europe/Berlin")
    summer = berlin.next_after(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    winter = berlin.next_after(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    assert (summer, winter) == (datetime(2026, 7, 2, 1, 30, tzinfo=UTC),
                                datetime(2026, 12, 2, 2, 30, tzinfo=UTC))


@pytest.mark.parametrize(("typo", "words"), [
    ("0 2 * * fryday", "bad day-of-week field"),
    ("@dayly", "not understood"),
    ("0 2 * * * Europe/Berlinn", "unknown time zone 'Europe/Berlinn'"),
])
def test_a_typo_is_one_sentence_saying_what_is_expected(typo: str, words: str):
    with pytest.raises(ScheduleError, match=words) as caught:
        parse_schedule(typo)
    message = str(caught.value)
    assert "\n" not in message and message.count(". ") == 0, "one sentence"
    assert typo in message


def test_the_spread_gives_each_user_one_point_of_its_own_share_of_the_window():
    users = [f"u{i}" for i in range(50)]
    plan = spread(users + users[:3], 600.0, random.Random(7))
    assert sorted(u for _, u in plan) == sorted(users), "one each, duplicates dropped"
    offsets = [o for o, _ in plan]
    assert offsets == sorted(offsets) and offsets[0] >= 0 and offsets[-1] < 600
    # Each user's point lies in its own 12 s share: never two in one share.
    assert len({int(o // 12) for o in offsets}) == 50
    assert spread([], 600.0) == [] and spread(["a"], 0.0) == [(0.0, "a")]
