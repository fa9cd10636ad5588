"""Calendar periods for credit and message limits.

Periods are computed in Python from the injected clock, never from Redis time, so day,
ISO-week and month edges in any timezone (DST included) are testable with a fake clock.
Each usage key expires a little after its period ends: no cron job resets anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

KINDS = ("day", "week", "month")
# Usage is kept a while after its period so late refunds still find it, and `credit -s`
# can show the previous period.
GRACE = timedelta(days=2)


@dataclass(frozen=True)
class Period:
    """One calendar period: ``kind`` day/week/month, ``id`` e.g. ``d20261126``."""

    kind: str
    id: str
    start: datetime
    end: datetime

    @cached_property
    def expire_at_ms(self) -> int:
        """When the usage key of this period may disappear (epoch ms)."""
        return int((self.end + GRACE).timestamp() * 1000)


def _local_midnight(day: datetime, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def periods_at(epoch_seconds: float, tz: ZoneInfo) -> tuple[Period, Period, Period]:
    """The day, ISO week (from Monday) and month containing ``epoch_seconds`` in ``tz``."""
    local = datetime.fromtimestamp(epoch_seconds, UTC).astimezone(tz)
    day_start = _local_midnight(local, tz)
    day_end = _local_midnight(local + timedelta(days=1), tz)
    week_first = local - timedelta(days=local.weekday())
    week_start = _local_midnight(week_first, tz)
    week_end = _local_midnight(week_first + timedelta(days=7), tz)
    month_start = datetime(local.year, local.month, 1, tzinfo=tz)
    if local.month == 12:
        month_end = datetime(local.year + 1, 1, 1, tzinfo=tz)
    else:
        month_end = datetime(local.year, local.month + 1, 1, tzinfo=tz)
    iso_year, iso_week, _ = local.isocalendar()
    return (
        Period("day", f"d{local:%Y%m%d}", day_start, day_end),
        Period("week", f"w{iso_year}W{iso_week:02d}", week_start, week_end),
        Period("month", f"m{local:%Y%m}", month_start, month_end),
    )
