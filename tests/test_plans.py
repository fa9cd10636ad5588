"""Top-up plans: occurrences across day, week, month and DST edges, exactly-once runs with
several schedulers and interrupted runs, catch-up, caps and threshold recharges.

Synchronous tests on the real test Redis (``sync_store``) with a fake ``Clock``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jasmin_credits.money import format_amount
from jasmin_credits.plans import (
    ALREADY_DONE,
    CHANGED,
    Plan,
    PlanScheduler,
    Schedule,
    Threshold,
    describe,
    latest_occurrence,
    next_occurrence,
    parse_day,
    plan_from_fields,
)
from jasmin_credits.scripts import _prelude
from jasmin_credits.store import CreditStore, StoreSettings

from .sync_redis import sync_client, sync_store

UTC_TZ = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class PlanTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = sync_store(self.clock)

    def at(self, moment: datetime, clock: Clock | None = None) -> None:
        clock = clock or self.clock
        clock.advance(moment.timestamp() - clock.seconds())

    def sync(self, coro) -> object:
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def set_plan(self, plan: Plan, uid: str = "alice", store: CreditStore | None = None) -> None:
        self.sync((store or self.store).set_plan(uid, plan.fields(), actor="test"))

    def tick(self, scheduler: PlanScheduler) -> None:
        self.successResultOf(scheduler.tick())

    def plan_entries(self, uid: str = "alice") -> list:
        entries, _ = self.sync(self.store.log(uid, types=frozenset({"plan"}), count=500))
        return list(reversed(entries))

    def balance(self, uid: str = "alice") -> int:
        return self.sync(self.store.wallet(uid)).balance


class OccurrenceTests(SynchronousTestCase):
    def test_monthly_31_is_the_last_day_of_short_months(self):
        """Day 31 runs on Feb 28, Apr 30 and Dec 31; day 30 on Feb 28 too."""
        s = Schedule("monthly", time(9, 0), "add", 1, day=31)
        got = latest_occurrence(s, UTC_TZ, utc("2027-03-15T00:00:00"))
        self.assertEqual(got, datetime(2027, 2, 28, 9, 0, tzinfo=UTC_TZ))
        got = next_occurrence(s, UTC_TZ, utc("2027-04-01T00:00:00"))
        self.assertEqual(got, datetime(2027, 4, 30, 9, 0, tzinfo=UTC_TZ))
        s30 = Schedule("monthly", time(9, 0), "add", 1, day=30)
        got = next_occurrence(s30, UTC_TZ, utc("2028-02-01T00:00:00"))
        self.assertEqual(got, datetime(2028, 2, 29, 9, 0, tzinfo=UTC_TZ))

    def test_weekly_and_start_end(self):
        """Weekly on Monday: the latest Monday before now; none before start or after end."""
        s = Schedule("weekly", time(8, 0), "add", 1, day=parse_day("weekly", "mon"))
        self.assertEqual(latest_occurrence(s, UTC_TZ, utc("2026-11-18T12:00:00")),
                         datetime(2026, 11, 16, 8, 0, tzinfo=UTC_TZ))
        bounded = Schedule("weekly", time(8, 0), "add", 1, day=0,
                           start=datetime(2026, 11, 17).date(), end=datetime(2026, 12, 1).date())
        self.assertIsNone(latest_occurrence(bounded, UTC_TZ, utc("2026-11-18T12:00:00")))
        self.assertEqual(next_occurrence(bounded, UTC_TZ, utc("2026-11-30T12:00:00")), None)

    def test_dst_gap_and_repeat_in_paris(self):
        """02:30 Paris: on the spring-forward day it happens at 03:30 CEST; in autumn once."""
        s = Schedule("daily", time(2, 30), "add", 1)
        spring = next_occurrence(s, PARIS, utc("2026-03-28T23:00:00"))
        self.assertEqual(spring.astimezone(UTC), utc("2026-03-29T01:30:00"))
        autumn = next_occurrence(s, PARIS, utc("2026-10-24T23:00:00"))
        self.assertEqual(autumn.astimezone(UTC), utc("2026-10-25T00:30:00"))

    def test_invalid_definitions_are_refused(self):
        """A weekly plan without a weekday, or a threshold without an amount, is refused."""
        with self.assertRaises(ValueError):
            Schedule("weekly", time(8, 0), "add", 1)
        with self.assertRaises(ValueError):
            plan_from_fields({"t_below": "5"}, UTC_TZ)
        with self.assertRaises(ValueError):
            parse_day("weekly", "9")


class ScheduledRunTests(PlanTestCase):
    def daily(self, **kw) -> Plan:
        return Plan(UTC_TZ, Schedule("daily", time(9, 0), kw.pop("mode", "add"),
                                     kw.pop("amount", 100), **kw))

    def test_daily_runs_once_per_day_across_midnight(self):
        """Ticks every 10 minutes for three days: one run a day, at 09:00 or just after."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(self.daily())
        scheduler = PlanScheduler(self.store, self.clock, interval=600)
        scheduler.start()
        self.clock.pump([600] * (6 * 24 * 3))
        self.successResultOf(scheduler.stop())
        entries = self.plan_entries()
        self.assertEqual([e.fields["ref"] for e in entries],
                         ["plan:alice:s20261118", "plan:alice:s20261119", "plan:alice:s20261120"])
        self.assertEqual(self.balance(), 300)
        self.assertEqual(entries[0].type, "plan")
        self.assertEqual(entries[0].fields["actor"], "plan:scheduled")
        events, _ = self.sync(self.store.events("alice", types=frozenset({"plan"})))
        self.assertEqual(len(events), 3)

    def test_weekly_crosses_week_and_month_edge(self):
        """Weekly on Monday from Wed Nov 25: runs Mon Nov 30 and Mon Dec 7 only."""
        self.at(utc("2026-11-25T10:00:00"))
        self.set_plan(Plan(UTC_TZ, Schedule("weekly", time(6, 0), "add", 5, day=0)))
        scheduler = PlanScheduler(self.store, self.clock)
        for _ in range(15 * 4):
            self.tick(scheduler)
            self.clock.advance(6 * 3600)
        self.assertEqual([e.fields["ref"] for e in self.plan_entries()],
                         ["plan:alice:s20261130", "plan:alice:s20261207"])

    def test_monthly_31st_in_short_months(self):
        """Monthly on the 31st from Jan 2027: Jan 31, Feb 28, Mar 31, Apr 30."""
        self.at(utc("2027-01-01T00:00:00"))
        self.set_plan(Plan(UTC_TZ, Schedule("monthly", time(0, 5), "add", 7, day=31)))
        scheduler = PlanScheduler(self.store, self.clock)
        for _ in range(121 * 2):
            self.tick(scheduler)
            self.clock.advance(12 * 3600)
        self.assertEqual([e.fields["ref"][-8:] for e in self.plan_entries()],
                         ["20270131", "20270228", "20270331", "20270430"])

    def test_paris_daily_across_both_dst_changes(self):
        """Daily 02:30 Europe/Paris: exactly one run per local date over both DST changes."""
        for start, days in (("2026-03-27T12:00:00", 4), ("2026-10-23T12:00:00", 4)):
            clock = Clock()
            store = sync_store(clock)
            self.at(utc(start), clock)
            self.sync(store.set_plan("alice", Plan(PARIS, Schedule(
                "daily", time(2, 30), "add", 1)).fields(), actor="t"))
            scheduler = PlanScheduler(store, clock)
            for _ in range(days * 24 * 4):
                self.successResultOf(scheduler.tick())
                clock.advance(900)
            entries, _ = self.sync(store.log("alice", types=frozenset({"plan"})))
            refs = sorted(e.fields["ref"] for e in entries)
            self.assertEqual(len(refs), days, refs)
            self.assertEqual(len(set(refs)), days)

    def test_reset_tops_up_never_down(self):
        """reset 500: a balance of 120 gets 380; a balance of 900 is left alone (skipped)."""
        self.at(utc("2026-11-18T08:00:00"))
        self.sync(self.store.top_up("alice", 120, op_id="p", actor="t"))
        self.set_plan(self.daily(mode="reset", amount=500))
        scheduler = PlanScheduler(self.store, self.clock)
        self.clock.advance(3600)
        self.tick(scheduler)
        self.assertEqual(self.balance(), 500)
        self.assertEqual(self.plan_entries()[-1].fields["amount"], "380")
        self.sync(self.store.top_up("alice", 400, op_id="q", actor="t"))
        self.clock.advance(86400)
        self.tick(scheduler)
        self.assertEqual(self.balance(), 900)
        events, _ = self.sync(self.store.events("alice", types=frozenset({"plan_skipped"})))
        self.assertEqual(events[0].fields["why"], "at_target")

    def test_monthly_cap_limits_what_the_schedule_adds(self):
        """add 100 daily with cap 250 a month: 100, 100, 50, then nothing until next month."""
        self.at(utc("2026-11-27T10:00:00"))
        self.set_plan(self.daily(cap=250))
        scheduler = PlanScheduler(self.store, self.clock)
        for _ in range(6):
            self.clock.advance(86400)
            self.tick(scheduler)
        amounts = [(e.fields["ref"][-8:], e.fields["amount"]) for e in self.plan_entries()]
        self.assertEqual(amounts, [("20261128", "100"), ("20261129", "100"),
                                   ("20261130", "50"), ("20261201", "100"),
                                   ("20261202", "100"), ("20261203", "50")])

    def test_catch_up_runs_only_the_latest_missed_occurrence(self):
        """Every gateway down three days: one run at the next start, for the last day."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(self.daily())
        self.clock.advance(3 * 86400 + 3600)
        scheduler = PlanScheduler(self.store, self.clock)
        self.tick(scheduler)
        self.tick(scheduler)
        self.assertEqual([e.fields["ref"] for e in self.plan_entries()],
                         ["plan:alice:s20261121"])

    def test_catch_up_limit_drops_stale_occurrences(self):
        """catch_up=3600: an occurrence 5 hours old is not run late; the next one is."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(self.daily())
        self.clock.advance(6 * 3600)
        scheduler = PlanScheduler(self.store, self.clock, catch_up=3600)
        self.tick(scheduler)
        self.assertEqual(self.plan_entries(), [])
        self.at(utc("2026-11-19T09:00:30"))
        self.tick(scheduler)
        self.assertEqual(len(self.plan_entries()), 1)

    def test_new_or_edited_plan_does_not_run_past_occurrences(self):
        """A daily 09:00 plan saved at 10:00 first runs tomorrow."""
        self.at(utc("2026-11-18T10:00:00"))
        self.set_plan(self.daily())
        scheduler = PlanScheduler(self.store, self.clock)
        self.tick(scheduler)
        self.assertEqual(self.plan_entries(), [])
        self.at(utc("2026-11-19T09:00:00"))
        self.tick(scheduler)
        self.assertEqual(len(self.plan_entries()), 1)

    def test_two_schedulers_on_one_redis_run_each_plan_once(self):
        """Two gateways' schedulers (own clients, same Redis) tick together: one run each."""
        self.at(utc("2026-11-18T08:00:00"))
        other = CreditStore(self.store.redis.__class__(sync_client()), clock=self.clock,
                            reactor=self.clock, keys=self.store.keys, settings=self.store.settings)
        for uid in ("alice", "bob", "carol"):
            self.set_plan(self.daily(), uid)
        first = PlanScheduler(self.store, self.clock, interval=60)
        second = PlanScheduler(other, self.clock, interval=60)
        first.start()
        second.start()
        self.clock.pump([60] * 60 * 30)
        self.successResultOf(first.stop())
        self.successResultOf(second.stop())
        for uid in ("alice", "bob", "carol"):
            self.assertEqual(len(self.plan_entries(uid)), 2, uid)
            self.assertEqual(self.balance(uid), 200)
        self.assertEqual(len(first.runs) + len(second.runs), 6)

    def test_applied_but_not_recorded_is_not_run_again(self):
        """Crash after the top-up, before the plan bookkeeping: a restart does not double it."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(self.daily())
        self.at(utc("2026-11-18T09:00:10"))
        # The interrupted attempt: the top-up under the run's operation id, nothing else.
        self.sync(self.store.top_up("alice", 100, op_id="plan:alice:s20261118",
                                   actor="plan:scheduled", kind="plan"))
        restarted = PlanScheduler(self.store, self.clock)
        self.tick(restarted)
        self.tick(restarted)
        self.assertEqual(self.balance(), 100)
        self.assertEqual(restarted.runs, [])
        fields = self.sync(self.store.plan_fields("alice"))
        self.assertEqual(fields["last_period"], "s20261118")
        self.clock.advance(86400)
        self.tick(restarted)
        self.assertEqual(self.balance(), 200)

    def test_decided_but_not_applied_is_applied_after_restart(self):
        """Crash after deciding a run, before applying it: the restarted scheduler runs it."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(self.daily())
        self.at(utc("2026-11-18T09:00:10"))
        crashed = PlanScheduler(self.store, self.clock)
        plan = plan_from_fields(self.sync(self.store.plan_fields("alice")), UTC_TZ)
        due = latest_occurrence(plan.scheduled, UTC_TZ, utc("2026-11-18T09:00:10"))
        self.assertIsNotNone(due)  # decided; the process dies before store.run_plan
        del crashed
        self.clock.advance(2 * 3600)
        restarted = PlanScheduler(self.store, self.clock)
        self.tick(restarted)
        self.assertEqual(self.balance(), 100)
        self.assertEqual(self.plan_entries()[0].fields["ref"], "plan:alice:s20261118")

    def test_stale_decision_after_an_edit_does_not_apply(self):
        """A run decided on version 1 answers CHANGED once the plan was edited."""
        self.at(utc("2026-11-18T09:30:00"))
        self.set_plan(self.daily())
        self.set_plan(self.daily(amount=5))
        status = self.sync(self.store.run_plan(
            "alice", "scheduled", version="1", op_id="plan:alice:s20261118",
            period="s20261118", mark=int(utc("2026-11-18T09:00:00").timestamp() * 1000),
            month="m202611"))
        self.assertEqual(status[0], CHANGED)
        self.assertEqual(self.balance(), 0)

    def test_removed_plan_and_removed_wallet_stop_running(self):
        """Removing the plan (or the wallet) stops the runs; the index forgets the user."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(self.daily())
        self.sync(self.store.set_plan("alice", None, actor="t"))
        self.set_plan(self.daily(), "bob")
        self.sync(self.store.remove("bob", "t"))
        self.clock.advance(86400)
        scheduler = PlanScheduler(self.store, self.clock)
        self.tick(scheduler)
        self.assertEqual(scheduler.runs, [])
        self.assertEqual(self.sync(self.store.plan_users()), [])

    def test_describe_shows_next_run(self):
        """describe() names the schedule, the next run in the plan's timezone and the threshold."""
        plan = Plan(PARIS, Schedule("monthly", time(9, 0), "reset", 500, day=31, cap=900),
                    Threshold(10, 50, 2))
        text = describe(plan, int(utc("2026-11-18T12:00:00").timestamp() * 1000))
        self.assertEqual(text, "monthly last 09:00 reset 500 cap 900/month, next 2026-11-30"
                               " 09:00 CET; below 10 add 50 (at most 2/day)")


class ThresholdRunTests(PlanTestCase):
    def test_threshold_recharges_at_most_k_times_a_day(self):
        """below 100 add 50, twice a day: two recharges, a plan_skipped event, then next day."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(Plan(UTC_TZ, threshold=Threshold(100, 50, 2)))
        scheduler = PlanScheduler(self.store, self.clock)
        for _ in range(5):
            self.tick(scheduler)
        self.assertEqual(self.balance(), 100)
        self.sync(self.store.top_up("alice", -60, op_id="spend", actor="t", kind="adjust"))
        for _ in range(3):
            self.tick(scheduler)
        self.assertEqual(self.balance(), 40)
        skipped, _ = self.sync(self.store.events("alice", types=frozenset({"plan_skipped"})))
        self.assertEqual([e.fields["why"] for e in skipped], ["daily_max"])
        self.at(utc("2026-11-19T00:00:01"))
        self.tick(scheduler)
        self.assertEqual(self.balance(), 90)
        refs = [e.fields["ref"] for e in self.plan_entries()]
        self.assertEqual(refs, ["plan:alice:t20261118:1", "plan:alice:t20261118:2",
                                "plan:alice:t20261119:1"])

    def test_threshold_stale_sequence_is_already_done(self):
        """A second scheduler with a stale run number gets 'already done', adds nothing."""
        self.at(utc("2026-11-18T08:00:00"))
        self.set_plan(Plan(UTC_TZ, threshold=Threshold(100, 50, 3)))
        version = self.sync(self.store.plan_fields("alice"))["version"]
        args = dict(version=version, op_id="plan:alice:t20261118:1", period="d20261118",
                    mark=1, month="m202611")
        self.assertEqual(self.sync(self.store.run_plan("alice", "threshold", **args))[:2],
                         (0, 50))
        self.assertEqual(self.sync(self.store.run_plan("alice", "threshold", **args))[0],
                         ALREADY_DONE)
        self.assertEqual(self.balance(), 50)


class PlanReasonTests(PlanTestCase):
    """Plan runs explain themselves to operators in credits, never in raw units."""

    def reasons(self) -> tuple[list[str], list[str]]:
        """The reasons of the plan runs' credit log entries and plan events, oldest first."""
        events, _ = self.sync(self.store.events("alice", types=frozenset({"plan"})))
        return ([e.fields["reason"] for e in self.plan_entries()],
                [e.fields["reason"] for e in reversed(events)])

    def test_threshold_reason_in_credits(self):
        """below 200 add 500 at 98.29 available: the reason says 98.29 and 200.00."""
        self.at(utc("2026-11-18T08:00:00"))
        self.sync(self.store.top_up("alice", 982_900, op_id="fund", actor="t"))
        self.set_plan(Plan(UTC_TZ, threshold=Threshold(2_000_000, 5_000_000)))
        self.tick(PlanScheduler(self.store, self.clock))
        reason = "threshold: available 98.29 below 200.00"
        self.assertEqual(self.reasons(), ([reason], [reason]))
        self.assertEqual(self.plan_entries()[0].fields["amount"], "5000000")  # units

    def test_scheduled_reasons_in_credits(self):
        """reset to 500 and add 0.0035 (capped at 0.0025) read as credits."""
        self.at(utc("2026-11-18T08:00:00"))
        self.sync(self.store.top_up("alice", -35, op_id="debt", actor="t", kind="adjust"))
        self.set_plan(Plan(UTC_TZ, Schedule("daily", time(9, 0), "reset", 5_000_000)))
        scheduler = PlanScheduler(self.store, self.clock)
        self.at(utc("2026-11-18T09:00:01"))
        self.tick(scheduler)
        self.set_plan(Plan(UTC_TZ, Schedule("daily", time(9, 0), "add", 35, cap=25)))
        self.at(utc("2026-11-19T09:00:01"))
        self.tick(scheduler)
        self.assertEqual(self.reasons()[0], [
            "scheduled: reset to 500.00",
            "scheduled: add 0.0035 (capped at the monthly cap)",
        ])

    def test_reason_follows_the_money_settings(self):
        """money.decimals 2, display_decimals 0: the reason follows them (-10.5, 20)."""
        store = sync_store(self.clock, StoreSettings(decimals=2, display_decimals=0))
        self.at(utc("2026-11-18T08:00:00"))
        self.sync(store.top_up("alice", -1050, op_id="debt", actor="t", kind="adjust"))
        self.sync(store.set_plan("alice", Plan(UTC_TZ, threshold=Threshold(2000, 500)).fields(),
                                 actor="test"))
        self.tick(PlanScheduler(store, self.clock))
        entries, _ = self.sync(store.log("alice", types=frozenset({"plan"})))
        self.assertEqual(entries[0].fields["reason"], "threshold: available -10.5 below 20")


class LuaMoneyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client = sync_client()

    @given(units=st.integers(-(2**53), 2**53), decimals=st.integers(0, 8), data=st.data())
    @settings(max_examples=300, deadline=None)
    def test_lua_money_matches_format_amount(self, units, decimals, data):
        """The scripts' money() writes exactly what money.format_amount shows."""
        shown = data.draw(st.integers(0, decimals))
        source = (_prelude({"MONEY_DECIMALS": decimals, "MONEY_SHOWN": shown})
                  + "return money(tonumber(ARGV[1]))")
        got = self.client.eval(source, 0, str(units))
        self.assertEqual(got, format_amount(units, decimals, shown))
