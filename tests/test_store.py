"""The credit store against a real redis-server: money moves exactly and idempotently."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from jasmin_credits.errors import Refusal, UnknownWallet
from jasmin_credits.store import Concat

from .redis_support import make_store


async def log_sum(store, uid):
    entries, _ = await store.log(uid, count=10_000)
    return sum(e.int_field("amount") for e in entries), entries


class TopUpTests(TestCase):
    async def test_top_up_creates_wallet_and_logs(self):
        """A first top-up creates the wallet and leaves one log entry with the new balance."""
        store = await make_store(self)
        balance, repeated = await store.top_up("alice", 1000, op_id="t1", actor="admin",
                                               reason="first")
        self.assertEqual((balance, repeated), (1000, False))
        total, entries = await log_sum(store, "alice")
        self.assertEqual(total, 1000)
        self.assertEqual(entries[0].type, "topup")
        self.assertEqual(entries[0].fields["balance"], "1000")
        self.assertEqual(entries[0].fields["actor"], "admin")
        self.assertEqual(await store.wallets(), ["alice"])

    async def test_top_up_is_idempotent_on_op_id(self):
        """Repeating a top-up with the same op id changes nothing and says so."""
        store = await make_store(self)
        await store.top_up("alice", 500, op_id="x", actor="a")
        balance, repeated = await store.top_up("alice", 500, op_id="x", actor="a")
        self.assertEqual((balance, repeated), (500, True))
        total, entries = await log_sum(store, "alice")
        self.assertEqual((total, len(entries)), (500, 1))

    async def test_negative_top_up_subtracts(self):
        """A negative amount subtracts, like Ozeki's Credits tab."""
        store = await make_store(self)
        await store.top_up("alice", 500, op_id="a", actor="a")
        balance, _ = await store.top_up("alice", -125, op_id="b", actor="a", reason="test")
        self.assertEqual(balance, 375)

    async def test_top_up_without_create_refuses_unknown_wallet(self):
        """create=False refuses a user without a wallet and creates nothing."""
        store = await make_store(self)
        with self.assertRaises(UnknownWallet):
            await store.top_up("bob", 5, op_id="a", actor="a", create=False)
        self.assertIsNone(await store.wallet("bob"))


class RemoveTests(TestCase):
    async def test_removal_writes_off_the_balance_in_the_credit_log(self):
        """Removing a wallet logs a 'removed' entry of -balance: the log still sums to the
        balance once a top-up creates the wallet again."""
        store = await make_store(self)
        await store.top_up("bob", 1200, op_id="t1", actor="admin")
        for _ in range(2):
            hold = await store.reserve("bob", 500, 1)
            await store.commit("bob", hold.ref)
        self.assertEqual(await store.remove("bob", "jcli:ops", "closed"), 200)
        total, entries = await log_sum(store, "bob")
        self.assertEqual(total, 0)
        removed = entries[0]
        self.assertEqual(removed.type, "removed")
        self.assertEqual(
            {k: removed.fields[k] for k in ("amount", "balance", "actor", "reason")},
            {"amount": "-200", "balance": "0", "actor": "jcli:ops", "reason": "closed"})
        balance, _ = await store.top_up("bob", 10000, op_id="t2", actor="admin")
        total, entries = await log_sum(store, "bob")
        self.assertEqual((balance, total), (10000, 10000))
        self.assertEqual([e.type for e in entries],
                         ["topup", "removed", "charge", "charge", "topup"])

    async def test_refused_removal_writes_nothing(self):
        """While a message is held the wallet stays, and neither log gets an entry."""
        store = await make_store(self)
        await store.top_up("bob", 1200, op_id="t1", actor="admin")
        await store.reserve("bob", 500, 1)
        with self.assertRaises(ValueError):
            await store.remove("bob", "jcli:ops")
        total, entries = await log_sum(store, "bob")
        self.assertEqual((total, [e.type for e in entries]), (1200, ["topup"]))
        self.assertEqual((await store.wallet("bob")).balance, 1200)


class ReserveSettleTests(TestCase):
    async def funded(self, amount=1000, **settings):
        store = await make_store(self)
        await store.top_up("alice", amount, op_id="fund", actor="test")
        if settings:
            await store.configure("alice", settings)
        return store

    async def test_reserve_holds_then_commit_charges(self):
        """A hold moves only `reserved`; the commit moves the balance and logs a charge."""
        store = await self.funded()
        hold = await store.reserve("alice", 120, 2, country="GB", destination="447911")
        self.assertTrue(hold.ok)
        self.assertEqual((hold.amount, hold.balance, hold.reserved), (240, 1000, 240))
        await store.link("alice", hold.ref, "msg-1", 2)
        done = await store.commit("alice", hold.ref, "msg-1")
        self.assertEqual((done.changed, done.balance, done.reserved, done.open_parts),
                         (-240, 760, 0, 0))
        total, entries = await log_sum(store, "alice")
        self.assertEqual(total, 760)
        charge = entries[0]
        self.assertEqual((charge.type, charge.fields["msgid"], charge.fields["country"],
                          charge.fields["parts"]), ("charge", "msg-1", "GB", "2"))

    async def test_insufficient_credit_refused(self):
        """A hold larger than the available credit is refused and changes nothing."""
        store = await self.funded(100)
        hold = await store.reserve("alice", 60, 2)
        self.assertEqual(hold.refusal, Refusal.INSUFFICIENT_CREDIT)
        wallet = await store.wallet("alice")
        self.assertEqual((wallet.balance, wallet.reserved, wallet.usage[0].credits),
                         (100, 0, 0))

    async def test_reservations_count_against_available(self):
        """Open holds reduce what later messages can hold."""
        store = await self.funded(100)
        self.assertTrue((await store.reserve("alice", 60, 1)).ok)
        self.assertEqual((await store.reserve("alice", 60, 1)).refusal,
                         Refusal.INSUFFICIENT_CREDIT)

    async def test_overdraft_allows_negative_down_to_limit(self):
        """With an overdraft the balance may go below zero, but not below -overdraft."""
        store = await self.funded(100, overdraft=50)
        self.assertTrue((await store.reserve("alice", 150, 1)).ok)
        self.assertEqual((await store.reserve("alice", 1, 1)).refusal,
                         Refusal.INSUFFICIENT_CREDIT)

    async def test_no_wallet_is_reported_not_refused(self):
        """A user without a wallet gets no_wallet; the policy is the caller's."""
        store = await make_store(self)
        hold = await store.reserve("nobody", 10, 1)
        self.assertTrue(hold.no_wallet)
        self.assertFalse(hold.ok)
        self.assertIsNone(hold.refusal)

    async def test_reserve_is_idempotent_on_ref(self):
        """Reserving twice with one ref holds once."""
        store = await self.funded()
        first = await store.reserve("alice", 100, 1)
        again = await store.reserve("alice", 100, 1, ref=first.ref)
        self.assertEqual((again.ref, again.reserved), (first.ref, 100))

    async def test_refund_of_held_gives_back_usage(self):
        """A refused-by-SMSC message is never charged and its usage comes back."""
        store = await self.funded()
        await store.configure("alice", {"lim:credits:day": 300})
        hold = await store.reserve("alice", 100, 3)
        self.assertEqual((await store.reserve("alice", 1, 1)).refusal,
                         Refusal.DAILY_CREDIT_LIMIT)
        await store.link("alice", hold.ref, "m1", 3)
        done = await store.settle_message("m1", sent=False, reason="ESME_RSUBMITFAIL")
        self.assertEqual((done.changed, done.balance, done.reserved), (0, 1000, 0))
        wallet = await store.wallet("alice")
        self.assertEqual((wallet.usage[0].credits, wallet.usage[0].msgs), (0, 0))
        total, entries = await log_sum(store, "alice")
        self.assertEqual((total, len(entries)), (1000, 1))
        events, _ = await store.events("alice")
        self.assertIn("released", [e.type for e in events])

    async def test_refund_after_commit_returns_credits_once(self):
        """Refunding a charged message returns credits and usage, once."""
        store = await self.funded()
        hold = await store.reserve("alice", 100, 1)
        await store.link("alice", hold.ref, "m1", 1)
        await store.commit("alice", hold.ref, "m1")
        first = await store.refund("alice", hold.ref, "UNDELIV", msgid="m1")
        second = await store.refund("alice", hold.ref, "UNDELIV", msgid="m1")
        self.assertEqual((first.changed, first.balance), (100, 1000))
        self.assertEqual((second.changed, second.balance), (0, 1000))
        total, entries = await log_sum(store, "alice")
        self.assertEqual(total, 1000)
        self.assertEqual([e.type for e in entries], ["refund", "charge", "topup"])
        self.assertEqual((await store.wallet("alice")).usage[0].credits, 0)

    async def test_commit_is_idempotent(self):
        """A repeated submit_sm_resp charges once."""
        store = await self.funded()
        hold = await store.reserve("alice", 100, 1)
        await store.link("alice", hold.ref, "m1", 1)
        await store.settle_message("m1", sent=True)
        again = await store.settle_message("m1", sent=True)
        self.assertEqual((again.changed, again.balance), (0, 900))

    async def test_outcome_before_link_is_applied_by_link(self):
        """A submit_sm_resp that overtakes the submit.sm event is applied at linking."""
        store = await self.funded()
        hold = await store.reserve("alice", 100, 1)
        self.assertIsNone(await store.settle_message("m9", sent=True))
        self.assertEqual((await store.wallet("alice")).balance, 1000)
        await store.link("alice", hold.ref, "m9", 1)
        wallet = await store.wallet("alice")
        self.assertEqual((wallet.balance, wallet.reserved), (900, 0))
        self.assertEqual(await store.message_link("m9"), ("alice", hold.ref))

    async def test_settle_message_settles_in_one_call(self):
        """A submit_sm_resp is one Lua call: the link names the user and the reservation."""
        store = await self.funded()
        hold = await store.reserve("alice", 100, 1, country="GB", destination="447911")
        await store.link("alice", hold.ref, "m5", 1)
        calls = []
        run = store.scripts.run
        store.scripts.run = lambda name, *a, **kw: calls.append(name) or run(name, *a, **kw)
        done = await store.settle_message("m5", sent=True, lazy=True)
        self.assertEqual(calls, ["outcome"])
        self.assertEqual((done.found, done.changed, done.balance, done.open_parts),
                         (True, -100, 900, 0))
        _, entries = await log_sum(store, "alice")
        self.assertEqual((entries[0].type, entries[0].fields["msgid"],
                          entries[0].fields["country"]), ("charge", "m5", "GB"))
        # a later error for the same message refunds it (also in one call)
        refund = await store.settle_message("m5", sent=False, reason="ESME_RSUBMITFAIL")
        self.assertEqual((refund.changed, refund.balance), (100, 1000))
        self.assertEqual(calls, ["outcome", "outcome"])

    async def test_link_written_by_an_older_version_still_settles(self):
        """A link without its periods (written before this version) settles in two calls."""
        store = await self.funded()
        hold = await store.reserve("alice", 100, 1)
        await store.link("alice", hold.ref, "m6", 1)
        await store.redis.execute_command("SET", store.keys.message("m6"),
                                          f"alice {hold.ref} 1")
        done = await store.settle_message("m6", sent=True)
        self.assertEqual((done.changed, done.balance), (-100, 900))
        again = await store.settle_message("m6", sent=True)
        self.assertEqual((again.changed, again.balance), (0, 900))

    async def test_lazy_operations_ride_along_with_the_next_call(self):
        """A lazy link waits for the next hold's call and goes in the same batch."""
        store = await self.funded()
        first = await store.reserve("alice", 100, 1)
        sent = []
        send = store.scripts._send
        store.scripts._send = lambda script, keys, args: sent.append(
            (script.name, [a for a in args if a in ("reserve", "settle")])
        ) or send(script, keys, args)
        store.scripts.lazy_delay = 60.0  # only the next hold can take it out
        link = defer.Deferred.fromCoroutine(store.link("alice", first.ref, "m7", 1, lazy=True))
        self.assertEqual(sent, [])
        second = await store.reserve("alice", 100, 1)
        settled = await link
        self.assertEqual(sent, [("batch", ["reserve", "settle"])])
        self.assertTrue(second.ok and settled.found)
        self.assertIsNone(store.scripts._lazy_timer)

    async def test_lazy_operation_alone_goes_after_its_delay(self):
        """With no other call coming, a lazy operation goes after lazy_delay."""
        store = await self.funded()
        hold = await store.reserve("alice", 100, 1)
        store.scripts.lazy_delay = 0.01
        settled = await store.link("alice", hold.ref, "m8", 1, lazy=True)
        self.assertEqual((settled.found, settled.open_parts), (True, 1))

    async def test_release_gives_back_never_queued_parts_only(self):
        """The sweeper's release returns unqueued parts and leaves queued ones alone."""
        store = await self.funded()
        hold = await store.reserve("alice", 10, 3,
                                   concat=Concat("k", seq=1, total=3))
        await store.link("alice", hold.ref, "p1", 1)
        done = await store.release("alice", hold.ref)
        self.assertEqual((done.reserved, done.open_parts), (10, 1))
        await store.commit("alice", hold.ref, "p1")
        wallet = await store.wallet("alice")
        self.assertEqual((wallet.balance, wallet.reserved), (990, 0))
        self.assertEqual(await store.users_with_open_reservations(), [])

    async def test_expire_settles_unanswered_by_policy(self):
        """Queued parts never answered are committed or refunded by the given policy."""
        store = await self.funded()
        hold = await store.reserve("alice", 10, 1)
        await store.link("alice", hold.ref, "p1", 1)
        done = await store.expire("alice", hold.ref, "refund")
        self.assertEqual((done.balance, done.reserved, done.open_parts), (1000, 0, 0))

    async def test_late_link_holds_again(self):
        """A part queued after its hold was released is held again, so it is charged."""
        store = await self.funded()
        hold = await store.reserve("alice", 10, 1)
        await store.release("alice", hold.ref)
        await store.link("alice", hold.ref, "p1", 1)
        await store.commit("alice", hold.ref, "p1")
        wallet = await store.wallet("alice")
        self.assertEqual((wallet.balance, wallet.reserved), (990, 0))
        total, _ = await log_sum(store, "alice")
        self.assertEqual(total, 990)


class ConcatTests(TestCase):
    async def test_first_part_holds_all_parts_others_claim(self):
        """Part 1 of 3 holds 3 parts; parts 2 and 3 claim the same reservation."""
        store = await make_store(self)
        await store.top_up("alice", 100, op_id="f", actor="t")
        refs = set()
        for seq in (2, 1, 3):  # arrival order does not matter
            hold = await store.reserve("alice", 10, 1, concat=Concat("m", seq, 3))
            self.assertTrue(hold.ok)
            refs.add(hold.ref)
        self.assertEqual(len(refs), 1)
        self.assertEqual((await store.wallet("alice")).reserved, 30)

    async def test_not_enough_for_all_parts_refuses_first_part(self):
        """A long message is refused whole rather than half sent."""
        store = await make_store(self)
        await store.top_up("alice", 25, op_id="f", actor="t")
        hold = await store.reserve("alice", 10, 1, concat=Concat("m", 1, 3))
        self.assertEqual(hold.refusal, Refusal.INSUFFICIENT_CREDIT)

    async def test_reused_reference_after_completion_is_a_new_message(self):
        """When all parts were claimed, the same UDH reference starts a new reservation."""
        store = await make_store(self)
        await store.top_up("alice", 100, op_id="f", actor="t")
        first = {(await store.reserve("alice", 10, 1, concat=Concat("m", s, 2))).ref
                 for s in (1, 2)}
        second = await store.reserve("alice", 10, 1, concat=Concat("m", 1, 2))
        self.assertNotIn(second.ref, first)
        self.assertEqual((await store.wallet("alice")).reserved, 40)


class ScriptCacheTests(TestCase):
    async def test_flushed_script_cache_is_reloaded(self):
        """After SCRIPT FLUSH (or a Redis restart) the next call loads the script again."""
        store = await make_store(self)
        await store.top_up("alice", 10, op_id="a", actor="t")
        await store.redis.execute_command("SCRIPT", "FLUSH")
        balance, _ = await store.top_up("alice", 5, op_id="b", actor="t")
        self.assertEqual(balance, 15)


class OutboxTests(TestCase):
    async def test_events_also_reach_the_outbox_with_their_user(self):
        """Every event is copied to the outbox stream with its uid, for the publisher."""
        store = await make_store(self)
        await store.top_up("alice", 100, op_id="a", actor="t")
        await store.configure("alice", {"low_balance": 50})
        hold = await store.reserve("alice", 60, 1)
        await store.commit("alice", hold.ref)
        outbox = await store.redis.execute_command("XRANGE", store.keys.outbox, "-", "+")
        kinds = [(dict(zip(f[::2], f[1::2], strict=True))["uid"],
                  dict(zip(f[::2], f[1::2], strict=True))["type"]) for _, f in outbox]
        self.assertEqual(kinds, [("alice", "topup"), ("alice", "settings"),
                                 ("alice", "low_balance")])
