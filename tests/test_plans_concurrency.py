"""Threshold recharges while messages are charged concurrently, on the real Redis through
txredisapi: two schedulers and many reserve/commit loops in flight at once."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from jasmin_credits.plans import Plan, PlanScheduler, Threshold
from jasmin_credits.store import StoreSettings

from .redis_support import make_store


class ThresholdUnderChargingTests(TestCase):
    async def test_threshold_recharge_under_concurrent_charging(self):
        """Runs stay within max_per_day, none twice, and the credit log sums to the balance."""
        store = await make_store(self, settings=StoreSettings(batch=True))
        other = await make_store(self, clock=store.clock, settings=StoreSettings(batch=False))
        other.keys = store.keys
        await store.top_up("alice", 150, op_id="seed", actor="test")
        plan = Plan(store.settings.timezone, threshold=Threshold(100, 200, 5))
        await store.set_plan("alice", plan.fields(), actor="test")
        schedulers = [PlanScheduler(store, store.clock), PlanScheduler(other, other.clock)]
        committed: list[int] = []

        async def spender(n: int) -> None:
            for _ in range(8):
                hold = await store.reserve("alice", 10, 1)
                if hold.ok:
                    await store.commit("alice", hold.ref)
                    committed.append(10)

        async def ticker(scheduler: PlanScheduler) -> None:
            for _ in range(30):
                await scheduler.tick()

        work = [Deferred.fromCoroutine(spender(n)) for n in range(20)]
        work += [Deferred.fromCoroutine(ticker(s)) for s in schedulers for _ in range(2)]
        results = await DeferredList(work, fireOnOneErrback=True, consumeErrors=True)
        self.assertTrue(all(ok for ok, _ in results))

        wallet = await store.wallet("alice")
        runs = [r for s in schedulers for r in s.runs]
        entries, _ = await store.log("alice", count=1000)
        plan_refs = [e.fields["ref"] for e in entries if e.type == "plan"]
        self.assertEqual(len(plan_refs), len(set(plan_refs)))
        self.assertEqual(len(plan_refs), len(runs))
        self.assertLessEqual(len(runs), 5)
        self.assertGreater(len(runs), 0)
        self.assertEqual(wallet.reserved, 0)
        self.assertEqual(wallet.balance, 150 + 200 * len(runs) - sum(committed))
        self.assertEqual(sum(e.int_field("amount") for e in entries), wallet.balance)
