"""Fail-open: messages sent while Redis was unavailable are charged once it answers."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from jasmin_credits.charging import Charger
from jasmin_credits.reconcile import Journal, Reconciler
from jasmin_credits.store import CreditStore, StoreSettings

from .jasmin_objects import routable, smpp_message, test_pricer
from .redis_support import connect, unique_keys


class Switchable:
    """A real Redis connection that can be made to hang, like a server that went away."""

    def __init__(self, conn):
        self.conn = conn
        self.down = False

    def execute_command(self, *args):
        return Deferred() if self.down else self.conn.execute_command(*args)


class ReconcileTests(TestCase):
    async def setup(self):
        self.redis = Switchable(await connect(self))
        self.store = CreditStore(self.redis, clock=reactor, reactor=reactor, keys=unique_keys(),
                                 settings=StoreSettings(call_timeout=0.2))
        await self.store.top_up("alice", 10_000, op_id="fund", actor="t")
        self.journal = Journal(self.mktemp() + "/unrecorded.jsonl")
        self.reconciler = Reconciler(self.store, self.journal, clock=reactor)
        self.charger = Charger(self.store, test_pricer, on_store_error="pass",
                               on_unrecorded=self.reconciler.record)

    async def test_messages_passed_while_down_are_charged_once_when_back(self):
        """Two messages pass while Redis hangs; the replay charges both, a second replay none."""
        await self.setup()
        self.redis.down = True
        for _ in range(2):
            self.assertTrue((await self.charger.charge(routable(smpp_message()))).accepted)
        await self.reconciler._safe_replay()  # store down: records wait in the journal
        self.redis.down = False
        self.assertEqual(await self.reconciler.replay(), 2)
        self.assertEqual(await self.reconciler.replay(), 0)
        wallet = await self.store.wallet("alice")
        self.assertEqual(wallet.balance, 10_000 - 2 * 1200)
        entries, _ = await self.store.log("alice")
        self.assertEqual([e.type for e in entries[:2]], ["adjust", "adjust"])

    async def test_interrupted_replay_is_repeated_without_double_charging(self):
        """A replay that died half-way is replayed whole; op ids keep each charge single."""
        await self.setup()
        self.redis.down = True
        for _ in range(2):
            await self.charger.charge(routable(smpp_message()))
        self.redis.down = False
        records = self.journal.take()  # the replay moved the journal aside ...
        await self.store.top_up(records[0]["uid"], -records[0]["amount"], op_id=records[0]["id"],
                                actor="reconciler", kind="adjust")  # ... applied one, died
        self.assertEqual(await self.reconciler.replay(), 2)
        self.assertEqual((await self.store.wallet("alice")).balance, 10_000 - 2 * 1200)
