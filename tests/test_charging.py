"""Charging real Jasmin routables against real Redis: parts, refusals, tags, failures."""

from __future__ import annotations

import pickle

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from jasmin_credits.charging import Charger
from jasmin_credits.config import parse_config
from jasmin_credits.errors import Refusal
from jasmin_credits.interceptors import InProcessInterceptor
from jasmin_credits.settlement import read_tag
from jasmin_credits.store import CreditStore, StoreSettings

from .jasmin_objects import http_message, routable, smpp_message, smpp_part, test_pricer
from .redis_support import make_store, unique_keys


class Silent:
    """A Redis client that never answers (a hung server)."""

    def execute_command(self, *args):
        return Deferred()


class ChargingTests(TestCase):
    async def charger(self, balance=10_000, **kwargs):
        self.store = await make_store(self)
        if balance is not None:
            await self.store.top_up("alice", balance, op_id="f", actor="t")
        pricer = test_pricer(kwargs.pop("default", None))
        return Charger(self.store, lambda: pricer, **kwargs)

    async def test_http_chain_holds_every_part_and_tags_first_pdu(self):
        """A 400-character HTTP message holds 3 parts at the UK mobile price."""
        charger = await self.charger()
        r = routable(http_message("a" * 400))
        decision = await charger.charge(r)
        self.assertTrue(decision.charged)
        self.assertEqual((decision.quote.parts, decision.quote.total), (3, 3600))
        self.assertEqual(read_tag(r.pdu), {"uid": "alice", "ref": decision.ref, "parts": 3})
        self.assertEqual((await self.store.wallet("alice")).reserved, 3600)

    async def test_country_prices_differ(self):
        """UK landline, France and US numbers hold their own card prices."""
        charger = await self.charger()
        totals = [(await charger.charge(routable(smpp_message(destination=d)))).quote.total
                  for d in ("442071234567", "+33 6 12 34 56 78", "0012025550123")]
        self.assertEqual(totals, [800, 700, 100])
        self.assertEqual((await self.store.wallet("alice")).reserved, 1600)

    async def test_smpp_concatenated_parts_share_one_hold(self):
        """Part 1 of 3 holds all 3 parts; parts 2 and 3 hold nothing more."""
        charger = await self.charger()
        decisions = [await charger.charge(routable(smpp_part(seq, 3))) for seq in (1, 2, 3)]
        self.assertEqual(len({d.ref for d in decisions}), 1)
        self.assertEqual((await self.store.wallet("alice")).reserved, 3600)

    async def test_long_message_refused_whole_when_credit_is_short(self):
        """With credit for 2 of 3 parts, the first part is refused: nothing is half sent."""
        charger = await self.charger(balance=2400)
        r = routable(smpp_part(1, 3))
        decision = await charger.charge(r)
        self.assertEqual(decision.refusal, Refusal.INSUFFICIENT_CREDIT)
        self.assertIsNone(read_tag(r.pdu))

    async def test_missing_wallet_passes_or_refuses_by_policy(self):
        """No wallet: pass uncharged by default, refuse with NO_WALLET when configured."""
        passing = await self.charger(balance=None)
        decision = await passing.charge(routable(smpp_message()))
        self.assertTrue(decision.accepted)
        self.assertFalse(decision.charged)
        refusing = Charger(self.store, test_pricer, missing_wallet="refuse")
        self.assertEqual((await refusing.charge(routable(smpp_message()))).refusal,
                         Refusal.NO_WALLET)

    async def test_bad_and_unpriced_destinations_refused(self):
        """Letters or 16 digits are invalid; a number no prefix matches is not priced."""
        charger = await self.charger()
        for dest, refusal in (("hello", Refusal.INVALID_DESTINATION),
                              ("1234567890123456", Refusal.INVALID_DESTINATION),
                              ("", Refusal.INVALID_DESTINATION),
                              ("861012345678", Refusal.NOT_PRICED)):
            decision = await charger.charge(routable(smpp_message(destination=dest)))
            self.assertEqual(decision.refusal, refusal, dest)
        self.assertEqual((await self.store.wallet("alice")).reserved, 0)

    async def test_hung_store_fails_closed_within_the_timeout(self):
        """A Redis that never answers refuses with STORE_UNAVAILABLE after the timeout."""
        store = CreditStore(Silent(), clock=reactor, reactor=reactor, keys=unique_keys(),
                            settings=StoreSettings(call_timeout=0.2))
        charger = Charger(store, test_pricer)
        decision = await charger.charge(routable(smpp_message()))
        self.assertEqual(decision.refusal, Refusal.STORE_UNAVAILABLE)

    async def test_fail_open_passes_and_records_for_reconciliation(self):
        """Fail-open lets the message go uncharged and reports it for reconciliation."""
        store = CreditStore(Silent(), clock=reactor, reactor=reactor, keys=unique_keys(),
                            settings=StoreSettings(call_timeout=0.2))
        recorded = []
        charger = Charger(store, test_pricer, on_store_error="pass",
                          on_unrecorded=lambda uid, quote, why: recorded.append((uid, quote)))
        decision = await charger.charge(routable(smpp_message()))
        self.assertTrue(decision.accepted)
        self.assertEqual([(uid, q.total) for uid, q in recorded], [("alice", 1200)])


class InProcessInterceptorTests(TestCase):
    async def interceptor(self, balance=10_000):
        self.store = await make_store(self)
        if balance is not None:
            await self.store.top_up("alice", balance, op_id="f", actor="t")
        pricer = test_pricer()
        self.config = parse_config({}, "test.yaml")
        return InProcessInterceptor(Charger(self.store, lambda: pricer), self.config)

    async def test_pass_through_script_charges_and_returns_tagged_routable(self):
        """A script that does nothing: the answer is the pickled routable, tag included."""
        client = await self.interceptor()
        answer = await client.run_script("pass", routable(smpp_message()))
        tagged = pickle.loads(answer)
        self.assertEqual(read_tag(tagged.pdu)["parts"], 1)
        self.assertEqual((await self.store.wallet("alice")).reserved, 1200)

    async def test_refusal_uses_configured_statuses(self):
        """No credit: Jasmin gets ESME_RX_P_APPN / 402 and the reason in extra."""
        client = await self.interceptor(balance=0)
        answer = await client.run_script("pass", routable(smpp_message()))
        self.assertEqual((answer["smpp_status"], answer["http_status"]), (0x65, 402))
        self.assertEqual(answer["extra"]["jasmin_credits"], "insufficient_credit")

    async def test_operator_script_refusal_wins_and_charges_nothing(self):
        """The operator's script runs first; its refusal is answered, nothing is held."""
        client = await self.interceptor()
        answer = await client.run_script("smpp_status = 0x0A", routable(smpp_message()))
        self.assertEqual(answer, {"smpp_status": 0x0A, "http_status": 520, "extra": {}})
        self.assertEqual((await self.store.wallet("alice")).reserved, 0)

    async def test_operator_script_can_change_the_destination_before_pricing(self):
        """Pricing sees what the script left: a rewritten destination is priced."""
        client = await self.interceptor()
        script = "routable.pdu.params['destination_addr'] = b'33612345678'"
        await client.run_script(script, routable(smpp_message()))
        self.assertEqual((await self.store.wallet("alice")).reserved, 700)

    async def test_failing_script_answers_false_like_stock(self):
        """A script that raises answers False, as Jasmin's interceptord does."""
        client = await self.interceptor()
        self.assertIs(await client.run_script("1/0", routable(smpp_message())), False)

    async def test_without_charging_runs_script_but_holds_nothing(self):
        """The /rate variant runs the script and charges nothing."""
        client = (await self.interceptor()).without_charging()
        answer = await client.run_script("pass", routable(smpp_message()))
        self.assertIsNone(read_tag(pickle.loads(answer).pdu))
        self.assertEqual((await self.store.wallet("alice")).reserved, 0)


class LeasedChargingTests(TestCase):
    """Charging with a credit lease book (``charging.lease``): real Redis, fake clock."""

    async def test_single_messages_hold_against_the_lease_concatenated_parts_do_not(self):
        from jasmin_credits.leasing import LeaseBook
        from jasmin_credits.settlement import parse_lease

        store = await make_store(self)
        await store.top_up("alice", 100_000, op_id="f", actor="t")
        ends: list = []
        book = LeaseBook(store, store.clock, lambda uid, lid: ends.append(lid), messages=10)
        pricer = test_pricer(None)
        charger = Charger(store, lambda: pricer, leases=book)
        first = await charger.charge(routable(http_message("a" * 400)))
        self.assertIsNone(first.lease)  # no lease yet: held in Redis, one asked for
        await book.requests()
        r = routable(http_message("a" * 400))
        second = await charger.charge(r)
        self.assertIsNotNone(second.lease)
        tag = read_tag(r.pdu)
        lease = parse_lease(tag["lease"])
        self.assertEqual((tag["parts"], lease.lease_id, lease.unit_price, lease.messages),
                         (3, second.lease.id, 1200, 1))
        self.assertEqual(lease.quote.split("|")[0], "GB")
        self.assertEqual(await store.reservation("alice", second.ref), {})  # settled writes it
        wallet = await store.wallet("alice")
        self.assertEqual((wallet.reserved, wallet.leased), (3600 + 10 * 3600, 10 * 3600))
        part = await charger.charge(routable(smpp_part(1, 3)))
        self.assertIsNone(part.lease)
        self.assertTrue(charger.give_back(second))
        self.assertEqual(second.lease.left, 10 * 3600)
        self.assertFalse(charger.give_back(first))
