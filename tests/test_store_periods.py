"""Limits follow calendar periods in the configured timezone, with a fake clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jasmin_credits.errors import Refusal
from jasmin_credits.periods import periods_at
from jasmin_credits.store import StoreSettings

from .sync_redis import sync_store

PARIS = ZoneInfo("Europe/Paris")


def at(clock: Clock, *args: int) -> None:
    """Move the clock forward to a local time in Paris."""
    target = datetime(*args, tzinfo=PARIS).timestamp()
    clock.advance(target - clock.seconds())


class PeriodTests(SynchronousTestCase):
    def test_day_edges_follow_local_midnight_across_dst(self):
        """The day of the spring-forward change is 23 hours long, in local time."""
        day, week, month = periods_at(datetime(2027, 3, 28, 12, tzinfo=PARIS).timestamp(),
                                      PARIS)
        self.assertEqual(day.id, "d20270328")
        self.assertEqual(day.end.timestamp() - day.start.timestamp(), 23 * 3600)
        self.assertEqual(week.id, "w2027W12")
        self.assertEqual(week.start.weekday(), 0)
        self.assertEqual(month.id, "m202703")

    def test_iso_week_of_new_year(self):
        """1 January 2027 (a Friday) belongs to ISO week 53 of 2026."""
        _, week, _ = periods_at(datetime(2027, 1, 1, 9, tzinfo=PARIS).timestamp(), PARIS)
        self.assertEqual(week.id, "w2026W53")


class LimitResetTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        at(self.clock, 2027, 3, 27, 23, 30)  # Saturday, the night before DST starts
        self.store = sync_store(self.clock, StoreSettings(timezone=PARIS))
        self.successResultOf(self.store.top_up("alice", 100_000, op_id="f", actor="t"))

    def reserve(self, amount=100):
        hold = self.successResultOf(self.store.reserve("alice", amount, 1))
        return hold.refusal

    def test_daily_limit_resets_at_local_midnight_across_dst(self):
        """A daily limit reached at 23:30 frees up at 00:00 Paris time, DST or not."""
        self.successResultOf(self.store.configure("alice", {"lim:credits:day": 200}))
        self.assertIsNone(self.reserve())
        self.assertIsNone(self.reserve())
        self.assertEqual(self.reserve(), Refusal.DAILY_CREDIT_LIMIT)
        at(self.clock, 2027, 3, 27, 23, 59)
        self.assertEqual(self.reserve(), Refusal.DAILY_CREDIT_LIMIT)
        at(self.clock, 2027, 3, 28, 0, 0)
        self.assertIsNone(self.reserve())
        # 23:59 on the short DST day is still that day
        at(self.clock, 2027, 3, 28, 23, 59)
        self.assertIsNone(self.reserve())
        self.assertEqual(self.reserve(), Refusal.DAILY_CREDIT_LIMIT)

    def test_weekly_limit_resets_on_monday(self):
        """A weekly limit counts Monday to Sunday and resets at Monday 00:00."""
        self.successResultOf(self.store.configure("alice", {"lim:credits:week": 100}))
        self.assertIsNone(self.reserve())
        at(self.clock, 2027, 3, 28, 23, 0)  # Sunday
        self.assertEqual(self.reserve(), Refusal.WEEKLY_CREDIT_LIMIT)
        at(self.clock, 2027, 3, 29, 0, 0)  # Monday
        self.assertIsNone(self.reserve())

    def test_monthly_message_limit_resets_on_the_first(self):
        """A monthly message limit counts messages, not credits, and resets on the 1st."""
        self.successResultOf(self.store.configure("alice", {"lim:msgs:month": 2}))
        self.assertIsNone(self.reserve(1))
        self.assertIsNone(self.reserve(1))
        self.assertEqual(self.reserve(1), Refusal.MONTHLY_MESSAGE_LIMIT)
        at(self.clock, 2027, 4, 1, 0, 0)
        self.assertIsNone(self.reserve(1))

    def test_limit_event_once_per_period_and_limit(self):
        """The limit_reached event is logged once per period, however many refusals."""
        self.successResultOf(self.store.configure("alice", {"lim:credits:day": 100}))
        self.reserve()
        for _ in range(3):
            self.assertEqual(self.reserve(), Refusal.DAILY_CREDIT_LIMIT)
        at(self.clock, 2027, 3, 28, 1, 0)
        self.reserve()
        self.assertEqual(self.reserve(), Refusal.DAILY_CREDIT_LIMIT)
        events, _ = self.successResultOf(self.store.events("alice"))
        self.assertEqual([e.type for e in events].count("limit_reached"), 2)

    def test_refund_next_day_returns_usage_to_the_day_it_counted(self):
        """A refund after midnight gives usage back to the day the message was held."""
        self.successResultOf(self.store.configure("alice", {"lim:credits:day": 100}))
        hold = self.successResultOf(self.store.reserve("alice", 100, 1))
        at(self.clock, 2027, 3, 28, 0, 30)
        self.assertIsNone(self.reserve())
        self.successResultOf(self.store.refund("alice", hold.ref, "test"))
        wallet = self.successResultOf(self.store.wallet("alice"))
        self.assertEqual(wallet.usage[0].credits, 100)  # today's usage is today's only

    def test_low_balance_event_once_per_crossing(self):
        """Low balance fires once when crossed, and again only after a top-up re-arms it."""
        self.successResultOf(self.store.configure("alice", {"low_balance": 99_900}))
        for _ in range(3):
            hold = self.successResultOf(self.store.reserve("alice", 100, 1))
            self.successResultOf(self.store.commit("alice", hold.ref))
        self.successResultOf(self.store.top_up("alice", 1000, op_id="g", actor="t"))
        hold = self.successResultOf(self.store.reserve("alice", 1000, 1))
        events, _ = self.successResultOf(self.store.events("alice"))
        self.assertEqual([e.type for e in events].count("low_balance"), 2)
        self.assertTrue(hold.ok)

    def test_reservation_of_an_earlier_day_does_not_reset_today(self):
        """A gateway whose clock is still yesterday (a ref made before midnight) neither
        resets nor counts against today's usage; the week it shares still counts it."""
        self.successResultOf(self.store.configure("alice", {"lim:credits:day": 300}))
        yesterday = int(self.clock.seconds() * 1000)
        at(self.clock, 2027, 3, 28, 0, 30)
        self.assertIsNone(self.reserve(200))
        late = self.successResultOf(self.store.reserve("alice", 100, 1, ref=f"{yesterday}-a1"))
        self.assertTrue(late.ok)
        day, week, _ = self.successResultOf(self.store.wallet("alice")).usage
        self.assertEqual((day.period.id, day.credits, day.msgs), ("d20270328", 200, 1))
        self.assertEqual((week.credits, week.msgs), (300, 2))
        self.assertIsNone(self.reserve(100))  # today: 300 of 300
        self.assertEqual(self.reserve(1), Refusal.DAILY_CREDIT_LIMIT)

    def test_usage_lives_with_the_wallet(self):
        """Removing a wallet removes its usage: a new wallet starts the period at zero."""
        hold = self.successResultOf(self.store.reserve("alice", 100, 1))
        self.successResultOf(self.store.commit("alice", hold.ref))
        self.assertEqual(self.successResultOf(self.store.wallet("alice")).usage[0].credits, 100)
        self.successResultOf(self.store.remove("alice", actor="t"))
        self.successResultOf(self.store.top_up("alice", 1_000, op_id="again", actor="t"))
        wallet = self.successResultOf(self.store.wallet("alice"))
        self.assertEqual([(u.credits, u.msgs) for u in wallet.usage], [(0, 0)] * 3)
