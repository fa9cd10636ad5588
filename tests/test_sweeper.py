"""The sweeper: timeouts against real Redis with a fake clock, scheduling with a fake store."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jasmin_credits.errors import StoreUnavailable
from jasmin_credits.sweeper import Sweeper

from .polling import eventually
from .redis_support import make_store

UID = "alice"
PRICE = 10
START = 1_795_000_000


async def setup(test):
    clock = Clock()
    clock.advance(START)
    store = await make_store(test, clock=clock)
    await store.top_up(UID, 1000, op_id="fund", actor="test")
    return clock, store


async def hold(store, msgid: str | None = None) -> str:
    held = await store.reserve(UID, PRICE, 1)
    assert held.ok, held
    if msgid:
        await store.link(UID, held.ref, msgid, 1)
    return held.ref


async def money(store) -> tuple[int, int]:
    wallet = await store.wallet(UID)
    return wallet.balance, wallet.reserved


def sweeper(store, clock, **kwargs) -> Sweeper:
    return Sweeper(store, clock=clock, unqueued_timeout=600, unanswered_timeout=86_400,
                   **kwargs)


class TimeoutTests(TestCase):
    async def test_unqueued_hold_released_after_timeout(self):
        """A hold never queued is released once older than unqueued_timeout, not before."""
        clock, store = await setup(self)
        await hold(store)
        s = sweeper(store, clock)
        clock.advance(599)
        self.assertEqual((await s.sweep_once()).released, 0)
        self.assertEqual(await money(store), (1000, PRICE))
        clock.advance(2)
        self.assertEqual((await s.sweep_once()).released, 1)
        self.assertEqual(await money(store), (1000, 0))
        self.assertEqual(await store.users_with_open_reservations(), [])

    async def test_queued_message_is_not_released(self):
        """A queued message awaiting its response keeps its hold past unqueued_timeout."""
        clock, store = await setup(self)
        await hold(store, msgid="m1")
        s = sweeper(store, clock)
        clock.advance(3600)
        stats = await s.sweep_once()
        self.assertEqual((stats.released, stats.expired), (0, 0))
        self.assertEqual(await money(store), (1000, PRICE))

    async def test_unanswered_message_refunded_by_default(self):
        """Past unanswered_timeout a queued, unanswered message is refunded."""
        clock, store = await setup(self)
        await hold(store, msgid="m1")
        s = sweeper(store, clock)
        clock.advance(86_401)
        self.assertEqual((await s.sweep_once()).expired, 1)
        self.assertEqual(await money(store), (1000, 0))

    async def test_unanswered_message_committed_by_policy(self):
        """unanswered_policy='commit' charges a queued, unanswered message at expiry."""
        clock, store = await setup(self)
        await hold(store, msgid="m1")
        s = sweeper(store, clock, unanswered_policy="commit")
        clock.advance(86_401)
        await s.sweep_once()
        self.assertEqual(await money(store), (1000 - PRICE, 0))

    async def test_two_sweepers_settle_once(self):
        """Two sweepers on one Redis racing over the same reservations charge each once."""
        clock, store = await setup(self)
        for i in range(5):
            await hold(store, msgid=f"m{i}")
        await hold(store)
        first = sweeper(store, clock, unanswered_policy="commit")
        second = sweeper(store, clock, unanswered_policy="commit")
        clock.advance(86_401)
        await DeferredList([Deferred.fromCoroutine(first.sweep_once()),
                            Deferred.fromCoroutine(second.sweep_once())],
                           fireOnOneErrback=True)
        self.assertEqual(await money(store), (1000 - 5 * PRICE, 0))
        entries, _ = await store.log(UID, count=100)
        self.assertEqual(len([e for e in entries if e.type == "charge"]), 5)

    async def test_timer_drives_the_sweep(self):
        """Started, the sweeper runs on its clock every interval and releases old holds."""
        clock, store = await setup(self)
        await hold(store)
        s = sweeper(store, clock, interval=30)
        await s.start()
        self.addCleanup(s.stop)
        clock.advance(601)  # one timer call, at a time when the hold is 601 s old
        await eventually(lambda: s.runs >= 1, timeout=10.0, what="the timer's sweep")
        self.assertEqual((s.runs, s.last.released), (1, 1))
        self.assertEqual(await money(store), (1000, 0))


class GatedStore:
    """A fake store whose user listing waits on a gate or fails on demand."""

    def __init__(self):
        self.listings = 0
        self.gate: Deferred | None = None
        self.failures = 0

    async def users_with_open_reservations(self):
        self.listings += 1
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("injected")
        if self.gate is not None:
            await self.gate
        return []

    async def expired_leases(self, before_ms):
        return []


class SchedulingTests(SynchronousTestCase):
    def test_runs_every_interval(self):
        """The first run comes one interval after start, then one per interval."""
        clock, store = Clock(), GatedStore()
        s = Sweeper(store, clock=clock, interval=30)
        s.start()
        clock.advance(29)
        self.assertEqual(store.listings, 0)
        clock.advance(1)
        clock.advance(30)
        self.assertEqual((store.listings, s.runs), (2, 2))
        self.successResultOf(s.stop())

    def test_runs_never_overlap(self):
        """A run still in progress delays the next; stop() waits for it."""
        clock, store = Clock(), GatedStore()
        store.gate = Deferred()
        s = Sweeper(store, clock=clock, interval=30)
        s.start()
        clock.advance(30)
        clock.advance(30)
        clock.advance(30)
        self.assertEqual(store.listings, 1)
        stopped = s.stop()
        self.assertNoResult(stopped)
        store.gate.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(s.runs, 1)

    def test_error_is_logged_and_next_run_retries(self):
        """A failing run is logged and the timer goes on; the next run succeeds."""
        clock, store = Clock(), GatedStore()
        store.failures = 1
        s = Sweeper(store, clock=clock, interval=30)
        s.start()
        with self.assertLogs("jasmin-credits.sweeper", "WARNING") as logged:
            clock.advance(30)
        self.assertEqual((store.listings, s.runs), (1, 0))
        # Redis unavailable is expected (a restart): one line, no traceback
        self.assertEqual(logged.output, ["WARNING:jasmin-credits.sweeper:sweep failed "
                                         "(injected); the next run retries"])
        clock.advance(30)
        self.assertEqual((store.listings, s.runs), (2, 1))
        self.successResultOf(s.stop())

    def test_bad_settings_are_refused(self):
        """Timeouts out of order and unknown policies are configuration errors."""
        store = GatedStore()
        with self.assertRaises(ValueError):
            Sweeper(store, clock=Clock(), unqueued_timeout=600, unanswered_timeout=300)
        with self.assertRaises(ValueError):
            Sweeper(store, clock=Clock(), unanswered_policy="keep")
