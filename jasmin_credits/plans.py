"""Automatic top-up plans: scheduled top-ups and threshold auto-recharge.

A wallet has at most one plan (the Redis hash ``keys.plan(uid)``, set from jCli with
``credit --plan``) with up to two parts:

- **scheduled**: ``daily``, ``weekly`` on a weekday or ``monthly`` on a day of the month
  (31, or any day the month lacks, means its last day) at a time of day in the plan's
  timezone. Mode ``add N`` adds N credits; ``reset N`` tops the balance up to N, never
  down. Optional first and last dates (inclusive, local) and an optional cap of credits
  added by the schedule per calendar month.
- **threshold**: when the available credit (balance minus held credits, overdraft not
  counted, as for the low-balance alert) is below T, add N, at most K times per local day.

Exactly once. The decision and the top-up are one Lua script (``lua/plan_run.lua``):
a scheduled run is keyed by its occurrence (operation id ``plan:<uid>:s<YYYYMMDD>``, and
the plan's ``last_due`` mark, which only moves forward); a threshold run by its day and
number (``plan:<uid>:t<YYYYMMDD>:<n>``). Several gateways, each with a
:class:`PlanScheduler`, may try the same run: one applies it, the others get "already
done". A run that was applied but whose bookkeeping was not (an interrupted attempt that
used the same operation id) only completes the bookkeeping, never adds twice; a run
decided but never applied is applied by the next tick, of this or another gateway.

Catch-up policy: each tick runs the **latest** occurrence at or before now, if it is after
the last one run and after the plan was saved. Occurrences missed while every gateway was
down therefore collapse into one run at the next start (a daily plan down for three days
runs once, for the last day), never several; ``catch_up`` (seconds) optionally drops an
occurrence older than that instead. Editing a plan never runs occurrences before the edit.

Every run is a credit log entry of type ``plan`` (actor ``plan:scheduled`` or
``plan:threshold``) and a ``plan`` event; a run that adds nothing (the reset target is
reached, the monthly cap is used up, the day's threshold runs are used up) is a
``plan_skipped`` event with ``why``.
"""

from __future__ import annotations

import logging
import re
from calendar import monthrange
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twisted.internet.interfaces import IReactorTime

from .errors import StoreUnavailable
from .periodic import PeriodicJob
from .store import CreditStore

log = logging.getLogger("jasmin-credits")

EVERY = ("daily", "weekly", "monthly")
MODES = ("add", "reset")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# plan_run.lua statuses
APPLIED, ALREADY_DONE, NOTHING_TO_ADD, CAPPED, DAY_MAX, NO_WALLET, CHANGED = 0, 1, 2, 3, 4, 8, 50

_TIME = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True)
class Schedule:
    """The scheduled part of a plan. Amounts are integer credit units."""

    every: str
    at: time
    mode: str
    amount: int
    day: int | None = None
    """weekly: 0 (Monday) to 6; monthly: 1 to 31 (a day the month lacks: its last day)."""
    start: date | None = None
    end: date | None = None
    cap: int | None = None
    """Most credits the schedule may add per calendar month (plan timezone)."""

    def __post_init__(self) -> None:
        if self.every not in EVERY:
            raise ValueError(f"every must be one of {', '.join(EVERY)}, got {self.every!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be add or reset, got {self.mode!r}")
        if self.amount <= 0:
            raise ValueError("the scheduled amount must be more than 0")
        if self.every == "weekly" and (self.day is None or not 0 <= self.day <= 6):
            raise ValueError("a weekly plan needs a weekday (day mon..sun)")
        if self.every == "monthly" and (self.day is None or not 1 <= self.day <= 31):
            raise ValueError("a monthly plan needs a day of the month (day 1..31)")
        if self.every == "daily" and self.day is not None:
            raise ValueError("a daily plan takes no day")
        if self.start and self.end and self.end < self.start:
            raise ValueError("the plan's end date is before its start date")
        if self.cap is not None and self.cap <= 0:
            raise ValueError("the monthly cap must be more than 0")


@dataclass(frozen=True)
class Threshold:
    """The auto-recharge part: below ``below`` add ``amount``, ``max_per_day`` times a day."""

    below: int
    amount: int
    max_per_day: int = 1

    def __post_init__(self) -> None:
        if self.below <= 0 or self.amount <= 0:
            raise ValueError("threshold below and recharge amount must be more than 0")
        if self.max_per_day < 1:
            raise ValueError("max_per_day must be at least 1")


@dataclass(frozen=True)
class Plan:
    """A wallet's plan with its run bookkeeping, as stored in the plan hash."""

    timezone: ZoneInfo
    scheduled: Schedule | None = None
    threshold: Threshold | None = None
    version: str = ""
    created_ms: int = 0
    last_due_ms: int = 0
    last_run_ms: int = 0
    threshold_day: str = ""
    threshold_count: int = 0

    def __post_init__(self) -> None:
        if self.scheduled is None and self.threshold is None:
            raise ValueError("a plan needs a schedule or a threshold (or none removes it)")

    def fields(self) -> dict[str, str]:
        """The definition as plan hash fields (``s_*``, ``t_*``, ``tz``)."""
        out: dict[str, str] = {"s_tz": self.timezone.key}
        s = self.scheduled
        if s is not None:
            out.update(s_every=s.every, s_at=s.at.strftime("%H:%M"), s_mode=s.mode,
                       s_amount=str(s.amount))
            if s.day is not None:
                out["s_day"] = str(s.day)
            if s.start:
                out["s_start"] = s.start.isoformat()
            if s.end:
                out["s_end"] = s.end.isoformat()
            if s.cap is not None:
                out["s_cap"] = str(s.cap)
        t = self.threshold
        if t is not None:
            out.update(t_below=str(t.below), t_amount=str(t.amount),
                       t_max_per_day=str(t.max_per_day))
        return out

    def seq_today(self, day_id: str) -> int:
        """The number the next threshold run of ``day_id`` has."""
        return (self.threshold_count if self.threshold_day == day_id else 0) + 1


def parse_time(text: str) -> time:
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"time of day must be HH:MM, got {text!r}")
    return time(int(m.group(1)), int(m.group(2)))


def parse_day(every: str | None, text: str) -> int:
    """A weekday (``mon``..``sun`` or 1..7 from Monday) or a day of the month (1..31, last)."""
    word = text.strip().lower()
    if word[:3] in WEEKDAYS and every != "monthly":
        return WEEKDAYS.index(word[:3])
    if word == "last":
        return 31
    if word.isdigit():
        n = int(word)
        if every == "weekly":
            if 1 <= n <= 7:
                return n - 1
            raise ValueError(f"weekday must be mon..sun or 1..7, got {text!r}")
        if 1 <= n <= 31:
            return n
    raise ValueError(f"day must be mon..sun (weekly) or 1..31/last (monthly), got {text!r}")


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}") from None


def _int(raw: dict[str, str], name: str, default: int | None = None) -> int | None:
    value = raw.get(name, "")
    return int(value) if value.lstrip("-").isdigit() else default


def plan_from_fields(raw: dict[str, str], default_tz: ZoneInfo) -> Plan | None:
    """Read a plan hash (definition and bookkeeping); None when there is no definition.

    Raises ValueError for an incomplete or invalid definition.
    """
    tz = parse_zone(raw["s_tz"]) if raw.get("s_tz") else default_tz
    scheduled = threshold = None
    if any(k in raw for k in ("s_every", "s_at", "s_mode", "s_amount")):
        missing = [k[2:] for k in ("s_every", "s_at", "s_mode", "s_amount") if not raw.get(k)]
        if missing:
            raise ValueError(f"the schedule needs {', '.join(missing)}"
                             " (every, at and add/reset)")
        scheduled = Schedule(
            every=raw["s_every"], at=parse_time(raw["s_at"]), mode=raw["s_mode"],
            amount=int(raw["s_amount"]), day=_int(raw, "s_day"),
            start=date.fromisoformat(raw["s_start"]) if raw.get("s_start") else None,
            end=date.fromisoformat(raw["s_end"]) if raw.get("s_end") else None,
            cap=_int(raw, "s_cap"),
        )
    if any(k in raw for k in ("t_below", "t_amount", "t_max_per_day")):
        if not raw.get("t_below") or not raw.get("t_amount"):
            raise ValueError("the threshold needs below and recharge")
        threshold = Threshold(int(raw["t_below"]), int(raw["t_amount"]),
                              _int(raw, "t_max_per_day", 1) or 1)
    if scheduled is None and threshold is None:
        return None
    return Plan(
        timezone=tz, scheduled=scheduled, threshold=threshold,
        version=raw.get("version", ""), created_ms=_int(raw, "created", 0) or 0,
        last_due_ms=_int(raw, "last_due", 0) or 0, last_run_ms=_int(raw, "last_run", 0) or 0,
        threshold_day=raw.get("thr_day", ""), threshold_count=_int(raw, "thr_count", 0) or 0,
    )


# -- occurrences -------------------------------------------------------------------------

def occurs_on(s: Schedule, day: date) -> bool:
    """Whether the schedule has an occurrence on local date ``day`` (ignoring start/end)."""
    if s.every == "daily":
        return True
    if s.every == "weekly":
        return day.weekday() == s.day
    last = monthrange(day.year, day.month)[1]
    return day.day == min(s.day or 1, last)


def occurrence_at(s: Schedule, day: date, tz: ZoneInfo) -> datetime:
    """The occurrence on ``day``: its time of day in ``tz``.

    A time skipped by a DST change (02:30 on a spring-forward day) happens at the same
    distance after the change (03:30); a repeated one (autumn) at its first instance.
    """
    return datetime.combine(day, s.at, tzinfo=tz)


def _in_range(s: Schedule, day: date) -> bool:
    return (s.start is None or day >= s.start) and (s.end is None or day <= s.end)


def latest_occurrence(s: Schedule, tz: ZoneInfo, now: datetime) -> datetime | None:
    """The last occurrence at or before ``now`` (within the last 62 days), or None."""
    today = now.astimezone(tz).date()
    for back in range(63):
        day = today - timedelta(days=back)
        if s.start is not None and day < s.start:
            return None
        if _in_range(s, day) and occurs_on(s, day):
            moment = occurrence_at(s, day, tz)
            if moment <= now:
                return moment
    return None


def next_occurrence(s: Schedule, tz: ZoneInfo, now: datetime) -> datetime | None:
    """The first occurrence after ``now``, or None (the plan ended)."""
    today = now.astimezone(tz).date()
    first = max(today, s.start) if s.start else today
    for ahead in range(63):
        day = first + timedelta(days=ahead)
        if s.end is not None and day > s.end:
            return None
        if occurs_on(s, day):
            moment = occurrence_at(s, day, tz)
            if moment > now:
                return moment
    return None


def period_id(moment: datetime, tz: ZoneInfo) -> str:
    """The scheduled period of an occurrence: ``s`` and its local date."""
    return f"s{moment.astimezone(tz):%Y%m%d}"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _local(ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz)


def describe(plan: Plan | None, now_ms: int, amount: Callable[[int], str] = str) -> str:
    """One line for ``credit -s`` / ``credit -l``: what the plan does and its next run."""
    if plan is None:
        return "-"
    parts = []
    s = plan.scheduled
    if s is not None:
        when = s.every
        if s.every == "weekly":
            when += f" {WEEKDAYS[s.day or 0]}"
        elif s.every == "monthly":
            when += " last" if s.day == 31 else f" {s.day}"
        text = f"{when} {s.at:%H:%M} {s.mode} {amount(s.amount)}"
        if s.cap is not None:
            text += f" cap {amount(s.cap)}/month"
        nxt = next_occurrence(s, plan.timezone, _local(now_ms, plan.timezone))
        text += (f", next {nxt:%Y-%m-%d %H:%M %Z}" if nxt else ", ended")
        parts.append(text)
    t = plan.threshold
    if t is not None:
        parts.append(f"below {amount(t.below)} add {amount(t.amount)}"
                     f" (at most {t.max_per_day}/day)")
    return "; ".join(parts)


# -- the scheduler -------------------------------------------------------------------------

class PlanScheduler(PeriodicJob):
    """Runs every due plan run, each ``interval`` seconds of ``clock``.

    Safe to run on every gateway at once (see the module docstring). ``catch_up``
    (seconds, None: no limit) drops an occurrence older than that instead of running it
    late. ``metrics`` (a :class:`~jasmin_credits.metrics.CreditMetrics`) counts runs.
    """

    job_name = "plan scheduler"

    def __init__(self, store: CreditStore, clock: IReactorTime, *, interval: float = 30.0,
                 catch_up: float | None = None, metrics: Any = None):
        self.store = store
        self.clock = clock
        self.interval = interval
        self.catch_up = catch_up
        self.metrics = metrics
        self.runs: list[tuple[str, str, int, int]] = []
        """Applied runs of this scheduler: (uid, kind, status, amount) (for tests, logs)."""

    async def _tick(self) -> None:
        try:
            uids = await self.store.plan_users()
        except StoreUnavailable as error:
            log.warning("plans not run this time: %s", error)
            return
        for uid in uids:
            try:
                await self.run_due(uid)
            except StoreUnavailable as error:
                log.warning("plan of %s not run this time: %s", uid, error)
                return
            except ValueError as error:
                log.error("plan of %s is invalid, not run: %s", uid, error)

    async def run_due(self, uid: str) -> None:
        """Run what is due in ``uid``'s plan now (scheduled occurrence, threshold)."""
        for _ in range(3):
            raw = await self.store.plan_fields(uid)
            plan = plan_from_fields(raw, self.store.settings.timezone)
            if plan is None:
                if not raw:  # the wallet and its plan were removed
                    await self.store.forget_plan_user(uid)
                return
            if await self._run_plan(uid, plan) != CHANGED:
                return

    async def _run_plan(self, uid: str, plan: Plan) -> int:
        now_ms = self.store.now_ms()
        now = _local(now_ms, plan.timezone)
        status = ALREADY_DONE
        s = plan.scheduled
        if s is not None:
            due = latest_occurrence(s, plan.timezone, now)
            if due is not None:
                due_ms = _ms(due)
                fresh = due_ms > plan.last_due_ms and due_ms >= plan.created_ms
                too_late = self.catch_up is not None and (now_ms - due_ms) / 1000 > self.catch_up
                if fresh and not too_late:
                    pid = period_id(due, plan.timezone)
                    status = await self._apply(
                        uid, "scheduled", plan, f"plan:{uid}:{pid}", pid, due_ms,
                        f"m{due.astimezone(plan.timezone):%Y%m}")
                    if status == CHANGED:
                        return status
        if plan.threshold is not None:
            day = f"d{now:%Y%m%d}"
            seq = plan.seq_today(day)
            status = await self._apply(uid, "threshold", plan, f"plan:{uid}:t{day[1:]}:{seq}",
                                       day, seq, f"m{now:%Y%m}")
        return status

    async def _apply(self, uid: str, which: str, plan: Plan, op_id: str, period: str,
                     mark: int, month: str) -> int:
        status, added, balance = await self.store.run_plan(
            uid, which, version=plan.version, op_id=op_id, period=period, mark=mark,
            month=month)
        if status == APPLIED:
            log.info("plan of %s: %s run %s added %s (balance %s)", uid, which, period,
                     added, balance)
            self.runs.append((uid, which, status, added))
            if self.metrics is not None:
                self.metrics.plan_run(which)
        return status


def with_changes(current: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """The plan definition ``current`` (hash fields) with session ``changes`` applied.

    A value None deletes the field; the keys ``s_*``/``t_*`` set to None together clear
    that part of the plan.
    """
    merged = {k: v for k, v in current.items() if k[:2] in ("s_", "t_")}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


__all__ = [
    "EVERY", "MODES", "Plan", "PlanScheduler", "Schedule", "Threshold", "describe",
    "latest_occurrence", "next_occurrence", "occurs_on", "parse_day", "parse_time",
    "parse_zone", "period_id", "plan_from_fields", "with_changes",
]
