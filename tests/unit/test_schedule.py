"""Cron expressions and the scheduler that starts runs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from dataproduct.cron import Cron, CronError
from pipelines.schedule import Scheduler

MOMENT = datetime(2026, 11, 21, 8, 59, 30, tzinfo=UTC)  # a Saturday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 * * * *", datetime(2026, 11, 21, 9, 0, tzinfo=UTC)),
        ("* * * * *", datetime(2026, 11, 21, 9, 0, tzinfo=UTC)),
        ("*/15 9-17 * * mon-fri", datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),
        ("30 2 1 jan *", datetime(2027, 1, 1, 2, 30, tzinfo=UTC)),
        ("0 0 29 2 *", datetime(2028, 2, 29, 0, 0, tzinfo=UTC)),
        ("5,10 8 21 11 *", datetime(2027, 11, 21, 8, 5, tzinfo=UTC)),
        ("0 12 * * 0", datetime(2026, 11, 22, 12, 0, tzinfo=UTC)),
        ("0 12 * * 7", datetime(2026, 11, 22, 12, 0, tzinfo=UTC)),
        # day of month OR day of week when both are restricted, as crontab does
        ("0 0 1 * mon", datetime(2026, 11, 23, 0, 0, tzinfo=UTC)),
    ],
)
def test_next_scheduled_minute(expression: str, expected: datetime) -> None:
    assert Cron.parse(expression).next_after(MOMENT) == expected


def test_matches_agrees_with_next_after() -> None:
    cron = Cron.parse("*/20 6-7 * * *")
    nxt = cron.next_after(MOMENT)
    assert cron.matches(nxt)
    assert not cron.matches(nxt.replace(minute=nxt.minute + 1))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "five fields"),
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "weekday"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "minute"),
        ("x * * * *", "minute"),
        ("0 0 31 2 *", "never"),
    ],
)
def test_bad_expressions_say_which_field(expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Cron.parse(expression).next_after(MOMENT)


def test_scheduler_starts_a_run_at_the_scheduled_minute() -> None:
    """A clock 0.2 s before 09:00 and an hourly schedule: the run starts at once."""
    started = threading.Event()
    offset = datetime(2026, 11, 21, 8, 59, 59, 800_000, tzinfo=UTC) - datetime.now(UTC)
    scheduler = Scheduler(
        Cron.parse("0 * * * *"), started.set, now=lambda: datetime.now(UTC) + offset
    )
    scheduler.start()
    try:
        assert started.wait(5), "the 09:00 run did not start"
    finally:
        scheduler.stop()


def test_a_stopped_scheduler_starts_nothing() -> None:
    started = threading.Event()
    offset = datetime(2026, 11, 21, 8, 59, 59, 500_000, tzinfo=UTC) - datetime.now(UTC)
    scheduler = Scheduler(
        Cron.parse("0 * * * *"), started.set, now=lambda: datetime.now(UTC) + offset
    )
    scheduler.start()
    scheduler.stop()
    assert not started.wait(1.0)
