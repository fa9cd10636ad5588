"""Credit leases: the Lua operations against real Redis, the gateway's lease book on a fake
clock, settlement writing leased holds from tags, and the books after every path."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from jasmin_credits.errors import Refusal, StoreUnavailable
from jasmin_credits.leasing import LeaseBook, default_gateway_name
from jasmin_credits.settlement import (
    LEASE_END_HEADER,
    TAG_HEADER,
    Outcome,
    Settlement,
    lease_end_marker,
    lease_field,
    link_tag,
)
from jasmin_credits.store import new_ref
from jasmin_credits.sweeper import Sweeper

from .redis_support import make_store

UID = "alice"
PRICE = 10
START = 1_795_000_000
QUOTE = "GB|447911000001|447|world"


async def setup(test, balance: int = 1000):
    clock = Clock()
    clock.advance(START)
    store = await make_store(test, clock=clock)
    await store.top_up(UID, balance, op_id="fund", actor="test")
    return clock, store


async def books(test, store, uid: str = UID) -> tuple[int, int, int]:
    """(balance, reserved, leased), after checking the credit log sums to the balance."""
    wallet = await store.wallet(uid)
    entries, _ = await store.log(uid, count=1000)
    test.assertEqual(sum(e.int_field("amount") for e in entries), wallet.balance)
    return wallet.balance, wallet.reserved, wallet.leased


def lease_id(store) -> str:
    return new_ref(store.now_ms())


def deadline(store) -> int:
    return store.now_ms() + 60_000


class LeaseOperationTests(TestCase):
    async def test_take_hold_commit_end_balances_the_books(self):
        """A lease moves credits into reserved; a held message charges once; the end gives
        back the rest; the credit log holds only the charge."""
        _, store = await setup(self)
        lid = lease_id(store)
        grant = await store.take_lease(UID, lid, 500, 50, least=PRICE, deadline_ms=deadline(store))
        self.assertEqual((grant.credits, grant.messages, grant.ok), (500, 50, True))
        self.assertEqual(await books(self, store), (1000, 500, 500))
        self.assertEqual((await store.wallet(UID)).available, 500)
        ref = new_ref(store.now_ms())
        await store.hold_leased(UID, ref, lid, PRICE, 1, 1, QUOTE)
        await store.hold_leased(UID, ref, lid, PRICE, 1, 1, QUOTE)  # repeated: nothing more
        self.assertEqual(await books(self, store), (1000, 500, 490))
        await store.link(UID, ref, "m1", 1)
        await store.commit(UID, ref, "m1")
        self.assertEqual(await books(self, store), (990, 490, 490))
        self.assertEqual(await store.end_lease(UID, lid), 490)
        self.assertIsNone(await store.end_lease(UID, lid))  # repeated: nothing more
        self.assertEqual(await books(self, store), (990, 0, 0))
        [charge] = (await store.log(UID))[0][:1]
        self.assertEqual((charge.type, charge.int_field("amount"), charge.fields["country"]),
                         ("charge", -PRICE, "GB"))
        usage = (await store.wallet(UID)).usage[0]
        self.assertEqual((usage.credits, usage.msgs), (PRICE, 1))

    async def test_link_leased_holds_and_links_in_one_call(self):
        """Settlement's write of a leased message: hold and link atomically, so its answer
        charges it whatever order the calls around it run in; repeats change nothing, and a
        hold an earlier run wrote without its link is linked."""
        _, store = await setup(self)
        lid = lease_id(store)
        await store.take_lease(UID, lid, 500, 50, least=PRICE, deadline_ms=deadline(store))
        ref = new_ref(store.now_ms())
        self.assertIsNone(await store.settle_message("m1", True))  # the answer came first
        linked = await store.link_leased(UID, ref, "m1", lid, PRICE, 1, 1, QUOTE)
        self.assertTrue(linked.found)
        self.assertEqual(linked.changed, -PRICE)  # the kept answer charged it at once
        again = await store.link_leased(UID, ref, "m1", lid, PRICE, 1, 1, QUOTE)
        self.assertEqual((again.found, again.changed), (True, 0))
        self.assertEqual(await books(self, store), (1000 - PRICE, 490, 490))
        earlier = new_ref(store.now_ms())
        await store.hold_leased(UID, earlier, lid, PRICE, 1, 1, QUOTE)  # its link was lost
        await store.link_leased(UID, earlier, "m2", lid, PRICE, 1, 1, QUOTE)
        await store.commit(UID, earlier, "m2")
        self.assertEqual(await books(self, store), (1000 - 2 * PRICE, 480, 480))
        self.assertFalse((await store.link_leased("nobody", new_ref(store.now_ms()), "m3",
                                                  lid, PRICE, 1, 1, QUOTE)).found)

    async def test_settlement_writes_a_leased_message_in_one_operation(self):
        """The regression behind lease_link: the handler of a leased message's submit.sm
        sends one store operation, never a hold and a link that could be reordered."""
        _, store = await setup(self)
        lid = lease_id(store)
        await store.take_lease(UID, lid, 500, 50, least=PRICE, deadline_ms=deadline(store))
        sent: list[str] = []
        run = store.scripts.run

        def recording(name, keys, args, lazy=False):
            sent.append(name)
            return run(name, keys, args, lazy)

        store.scripts.run = recording
        tag = {"uid": UID, "ref": new_ref(store.now_ms()), "parts": 1,
               "lease": lease_field(lid, PRICE, 1, QUOTE)}
        self.assertEqual(await link_tag(store, "m1", tag), Outcome.SETTLED)
        self.assertEqual(sent, ["lease_link"])
        self.assertEqual((await store.wallet(UID)).leased, 490)

    async def test_two_gateways_never_lease_more_than_the_wallet(self):
        """Leases are carved atomically: a second one gets what the first left."""
        _, store = await setup(self)
        grants = [await store.take_lease(UID, lease_id(store), 600, 60, least=PRICE,
                                         deadline_ms=deadline(store)) for _ in range(8)]
        # each takes at most half of what is left, and never less than one message
        self.assertEqual([g.credits for g in grants], [500, 250, 125, 62, 31, 16, 0, 0])
        self.assertEqual((await store.wallet(UID)).available, 16)
        self.assertTrue((await store.reserve(UID, PRICE, 1)).ok)
        self.assertEqual((await store.reserve(UID, PRICE, 1)).refusal,
                         Refusal.INSUFFICIENT_CREDIT)

    async def test_lease_stops_at_the_low_balance_threshold_and_limits(self):
        """A lease leaves the threshold untouched and takes at most half of the room under
        every limit; less than one message's worth is no lease."""
        _, store = await setup(self)
        await store.configure(UID, {"low_balance": 700, "lim:msgs:day": 5,
                                    "lim:credits:week": 250})
        grant = await store.take_lease(UID, lease_id(store), 500, 50, least=PRICE,
                                       deadline_ms=deadline(store))
        self.assertEqual((grant.credits, grant.messages), (125, 2))
        second = await store.take_lease(UID, lease_id(store), 500, 50, least=PRICE,
                                        deadline_ms=deadline(store))
        self.assertEqual((second.credits, second.messages), (62, 1))
        none = await store.take_lease(UID, lease_id(store), 500, 50, least=40,
                                      deadline_ms=deadline(store))
        self.assertEqual((none.ok, none.credits), (False, 0))
        events, _ = await store.events(UID)
        self.assertNotIn("low_balance", [e.type for e in events])

    async def test_open_lease_counts_against_limits_of_single_holds(self):
        """A message held one by one (a concatenated one) sees the lease's room as used."""
        _, store = await setup(self)
        await store.configure(UID, {"lim:msgs:day": 2})
        lid = lease_id(store)
        grant = await store.take_lease(UID, lid, 30, 3, least=PRICE, deadline_ms=deadline(store))
        self.assertEqual(grant.messages, 1)
        self.assertTrue((await store.reserve(UID, PRICE, 1)).ok)
        self.assertEqual((await store.reserve(UID, PRICE, 1)).refusal,
                         Refusal.DAILY_MESSAGE_LIMIT)
        await store.end_lease(UID, lid)
        self.assertTrue((await store.reserve(UID, PRICE, 1)).ok)

    async def test_message_after_the_lease_ended_is_held_from_the_wallet(self):
        """A leased message read after its lease's end is still held (and charged once),
        even below zero, with a late_hold event."""
        _, store = await setup(self, balance=25)
        lid = lease_id(store)
        grant = await store.take_lease(UID, lid, 10, 1, least=PRICE, deadline_ms=deadline(store))
        self.assertTrue(grant.ok)
        await store.end_lease(UID, lid)
        ref = new_ref(store.now_ms())
        await store.hold_leased(UID, ref, lid, PRICE, 3, 1, QUOTE)
        self.assertEqual(await books(self, store), (25, 30, 0))
        await store.link(UID, ref, "m1", 3)
        await store.commit(UID, ref, "m1")
        self.assertEqual(await books(self, store), (-5, 0, 0))
        events, _ = await store.events(UID)
        self.assertIn("late_hold", [e.type for e in events])

    async def test_removed_wallet_and_unknown_lease(self):
        """Ending an unknown lease changes nothing; a wallet with a lease cannot be removed."""
        _, store = await setup(self)
        self.assertIsNone(await store.end_lease(UID, lease_id(store)))
        lid = lease_id(store)
        await store.take_lease(UID, lid, 100, 10, least=PRICE, deadline_ms=deadline(store))
        with self.assertRaises(ValueError):
            await store.remove(UID, "test")
        await store.end_lease(UID, lid)
        self.assertEqual(await store.remove(UID, "test"), 1000)

    async def test_sweeper_ends_leases_past_their_deadline(self):
        """A gateway that died published no end: the sweeper gives the rest back after the
        deadline, not before."""
        clock, store = await setup(self)
        lid = lease_id(store)
        await store.take_lease(UID, lid, 100, 10, least=PRICE,
                               deadline_ms=store.now_ms() + 60_000)
        await store.hold_leased(UID, new_ref(store.now_ms()), lid, PRICE, 1, 1, QUOTE)
        sweeper = Sweeper(store, clock=clock, unqueued_timeout=600, unanswered_timeout=86_400)
        clock.advance(59)
        self.assertEqual((await sweeper.sweep_once()).leases, 0)
        clock.advance(2)
        self.assertEqual((await sweeper.sweep_once()).leases, 1)
        self.assertEqual(await books(self, store), (1000, PRICE, 0))

    async def test_gateway_set_names_its_open_leases_until_they_end(self):
        """A lease taken for a gateway is in that gateway's set until it ends, whoever ends
        it (its marker, or the sweeper); a lease without a gateway is in no set."""
        clock, store = await setup(self)
        first, second, anonymous = lease_id(store), lease_id(store) + "b", lease_id(store) + "c"
        for lid, gateway in ((first, "gw-a"), (second, "gw-a"), (anonymous, None)):
            await store.take_lease(UID, lid, 100, 10, least=PRICE, gateway=gateway,
                                   deadline_ms=store.now_ms() + 60_000)
        self.assertEqual(await store.gateway_leases("gw-a"),
                         sorted([(UID, first), (UID, second)]))
        self.assertEqual(await store.gateway_leases("gw-b"), [])
        await store.end_lease(UID, first)
        self.assertEqual(await store.gateway_leases("gw-a"), [(UID, second)])
        clock.advance(61)
        sweeper = Sweeper(store, clock=clock, unqueued_timeout=600, unanswered_timeout=86_400)
        self.assertEqual((await sweeper.sweep_once()).leases, 2)
        self.assertEqual(await store.gateway_leases("gw-a"), [])
        self.assertEqual(await books(self, store), (1000, 0, 0))


class Published:
    """Records lease end markers (jasmind's AMQP publish)."""

    def __init__(self):
        self.ends: list[tuple[str, str]] = []

    def __call__(self, uid: str, lid: str) -> None:
        self.ends.append((uid, lid))


async def leased(store, book, uid: str = UID):
    """Ask for ``uid``'s lease, wait for it, hold one message: (periods, lease)."""
    periods = store.period_ids(store.now_ms())
    book.ask(uid, PRICE)
    await book.requests()
    return periods, book.hold(uid, PRICE, periods)


class LeaseBookTests(TestCase):
    async def book(self, **kw):
        clock, store = await setup(self)
        published = Published()
        book = LeaseBook(store, clock, published, messages=kw.pop("messages", 4), **kw)
        return clock, store, book, published

    async def settle_background(self, book):
        """Wait for the book's background lease requests to be answered."""
        await book.requests()

    async def test_first_message_asks_then_messages_hold_in_memory(self):
        clock, store, book, _ = await self.book()
        periods = store.period_ids(store.now_ms())
        self.assertIsNone(book.hold(UID, PRICE, periods))  # held in Redis, then:
        book.ask(UID, PRICE)
        await self.settle_background(book)
        lease = book.hold(UID, PRICE, periods)
        self.assertIsNotNone(lease)
        self.assertEqual((lease.credits, lease.messages, lease.left, lease.messages_left),
                         (4 * PRICE, 4, 3 * PRICE, 3))
        self.assertEqual(await books(self, store), (1000, 4 * PRICE, 4 * PRICE))
        book.give_back(lease, PRICE)
        self.assertEqual((lease.left, lease.messages_left), (4 * PRICE, 4))

    async def test_next_lease_is_ready_at_half_and_takes_over_when_one_no_longer_fits(self):
        """The first lease holds until a message does not fit; the next one, asked for when
        the first was half used, takes over, and the first's end is published later."""
        clock, store, book, published = await self.book()
        periods, first = await leased(store, book)
        self.assertIs(book.hold(UID, PRICE, periods), first)
        self.assertIs(book.hold(UID, PRICE, periods), first)  # 1 of 4 left: next asked for
        await self.settle_background(book)
        self.assertEqual(len(book.open()), 2)
        second = book.open()[1]
        self.assertIs(book.hold(UID, PRICE, periods), first)  # the first holds to the end
        self.assertEqual((first.left, first.messages_left), (0, 0))
        self.assertIs(book.hold(UID, PRICE, periods), second)
        self.assertEqual(book.open(), [second])
        self.assertEqual(published.ends, [])  # still on its way: the marker waits
        clock.advance(book.end_delay)
        self.assertEqual(published.ends, [(UID, first.id)])
        await store.end_lease(UID, first.id)
        self.assertEqual(await books(self, store), (1000, 4 * PRICE, 4 * PRICE))

    async def test_idle_and_expired_leases_end(self):
        clock, store, book, published = await self.book(idle=5, seconds=30)
        periods, lease = await leased(store, book)
        clock.advance(4)
        book.tick()
        self.assertEqual(book.open(), [lease])
        clock.advance(1)
        book.tick()
        self.assertEqual(book.open(), [])
        clock.advance(book.end_delay)
        self.assertEqual(published.ends, [(UID, lease.id)])

    async def test_refused_lease_holds_one_by_one_and_retries_later(self):
        clock, store, book, _ = await self.book()
        await store.top_up(UID, -995, op_id="drain", actor="test")  # 5 < one message
        periods = store.period_ids(store.now_ms())
        book.ask(UID, PRICE)
        await self.settle_background(book)
        self.assertIsNone(book.hold(UID, PRICE, periods))
        await store.top_up(UID, 1000, op_id="more", actor="test")
        book.ask(UID, PRICE)  # quiet after a refusal: no request
        await self.settle_background(book)
        self.assertIsNone(book.hold(UID, PRICE, periods))
        clock.advance(book.retry)
        book.ask(UID, PRICE)
        await self.settle_background(book)
        self.assertIsNotNone(book.hold(UID, PRICE, periods))

    async def test_new_period_retires_the_lease(self):
        clock, store, book, published = await self.book()
        periods, lease = await leased(store, book)
        tomorrow = store.period_ids(store.now_ms() + 86_400_000)
        self.assertIsNone(book.hold(UID, PRICE, tomorrow))
        clock.advance(book.end_delay)
        self.assertEqual(published.ends, [(UID, lease.id)])

    async def test_failed_end_marker_is_logged_not_raised(self):
        """A marker the broker refuses (or a publish that raises) is logged, not raised."""
        clock, store = await setup(self)

        def broken(uid, lid):
            raise ConnectionError("AMQP channel closed")

        book = LeaseBook(store, clock, broken, messages=4)
        periods, lease = await leased(store, book)
        with self.assertLogs("jasmin-credits", "WARNING") as logged:
            await book.stop()
        self.assertIn(lease.id, logged.output[0])
        self.assertEqual(book.open(), [])

    async def test_marker_the_broker_did_not_take_is_published_again_once_ready(self):
        """A broker outage: the marker fails, is logged once and kept; the ticks while the
        broker is away do not try it; the first tick after publishes it, once."""
        clock, store = await setup(self)
        up = {"broker": False}
        published = Published()

        def publish(uid, lid):
            if not up["broker"]:
                raise ConnectionError("AMQP connection not ready")
            published(uid, lid)

        book = LeaseBook(store, clock, publish, messages=4, idle=1,
                         ready=lambda: up["broker"])
        periods, lease = await leased(store, book)
        clock.advance(1)
        with self.assertLogs("jasmin-credits", "WARNING") as logged:
            book.tick()  # idle: retired, its marker due end_delay later
            clock.advance(book.end_delay)
        self.assertIn(lease.id, logged.output[0])
        book.tick()
        self.assertEqual(published.ends, [])
        up["broker"] = True
        book.tick()
        self.assertEqual(published.ends, [(UID, lease.id)])
        book.tick()
        self.assertEqual(published.ends, [(UID, lease.id)])  # once

    async def test_stop_ends_every_lease_at_once(self):
        clock, store, book, published = await self.book()
        periods, lease = await leased(store, book)
        await book.stop()
        self.assertEqual(published.ends, [(UID, lease.id)])

    async def test_stop_delay_holds_nothing_more_and_ends_leases_after_it(self):
        """The drop-in interceptord stops while jasmind still queues what it was answered:
        from the stop on nothing is held on a lease, and the markers wait ``stop_delay``."""
        clock, store, book, published = await self.book(stop_delay=1.0)
        periods, lease = await leased(store, book)
        stopped = book.stop()
        self.assertIsNone(book.hold(UID, PRICE, periods))
        clock.advance(0.9)
        self.assertEqual((published.ends, stopped.called), ([], False))
        clock.advance(0.1)
        self.assertEqual(published.ends, [(UID, lease.id)])
        await stopped


class OperatorCutTests(TestCase):
    """An operator's subtraction, settings change or removal attempt ends the wallet's
    leases within a tick: a customer debited to nothing stops sending at once."""

    async def test_epoch_rises_on_cuts_and_settings_not_on_top_ups(self):
        _, store = await setup(self)
        grant = await store.take_lease(UID, lease_id(store), 100, 10, least=PRICE,
                                       deadline_ms=deadline(store))
        self.assertEqual(grant.epoch, 0)
        self.assertEqual(await store.lease_epochs([UID, "nobody"]), {UID: 0, "nobody": -1})
        await store.top_up(UID, 50, op_id="more", actor="ops")
        self.assertEqual(await store.lease_epochs([UID]), {UID: 0})
        await store.top_up(UID, -50, op_id="less", actor="ops")
        self.assertEqual(await store.lease_epochs([UID]), {UID: 1})
        await store.top_up(UID, -50, op_id="less", actor="ops")  # repeated op: nothing
        self.assertEqual(await store.lease_epochs([UID]), {UID: 1})
        await store.configure(UID, {"lim:msgs:day": 100})
        self.assertEqual(await store.lease_epochs([UID]), {UID: 2})
        again = await store.take_lease(UID, grant.lease_id, 100, 10, least=PRICE,
                                       deadline_ms=deadline(store))
        self.assertEqual(again, grant)  # a repeat answers the first grant, its epoch too
        later = await store.take_lease(UID, lease_id(store), 100, 10, least=PRICE,
                                       deadline_ms=deadline(store))
        self.assertEqual(later.epoch, 2)

    async def test_removal_refused_while_leased_ends_the_leases(self):
        """A wallet cannot be removed while a lease holds its credit; the refusal ends the
        lease, so the operator's retry, once its marker is read, succeeds."""
        _, store = await setup(self)
        lid = lease_id(store)
        await store.take_lease(UID, lid, 100, 10, least=PRICE, deadline_ms=deadline(store))
        with self.assertRaises(ValueError) as refused:
            await store.remove(UID, actor="ops")
        self.assertIn("credit leases open", str(refused.exception))
        self.assertEqual(await store.lease_epochs([UID]), {UID: 1})
        await store.end_lease(UID, lid)
        await store.remove(UID, actor="ops")
        self.assertEqual(await store.lease_epochs([UID]), {UID: -1})

    async def test_book_ends_the_leases_of_a_cut_wallet_at_its_next_tick(self):
        clock, store = await setup(self)
        published = Published()
        book = LeaseBook(store, clock, published, messages=4)
        periods, lease = await leased(store, book)
        self.assertIsNotNone(lease)
        await book.check_epochs()
        self.assertEqual(book.open(), [lease])  # nothing changed: kept
        await store.top_up(UID, 500, op_id="more", actor="ops")
        await book.check_epochs()
        self.assertEqual(book.open(), [lease])  # more credit: kept
        await store.top_up(UID, -900, op_id="cut", actor="ops")
        await book.check_epochs()
        self.assertEqual(book.open(), [])
        self.assertIsNone(book.hold(UID, PRICE, periods))  # the next message goes to Redis
        clock.advance(book.end_delay)
        self.assertEqual(published.ends, [(UID, lease.id)])
        # the marker gives back what the lease did not hold: the cut wallet is what is left
        lease_hold = await store.hold_leased(UID, new_ref(store.now_ms()), lease.id, PRICE, 1,
                                             1, QUOTE)
        self.assertIsNotNone(lease_hold)
        await store.end_lease(UID, lease.id)
        balance, reserved, unused = await books(self, store)
        self.assertEqual((balance, unused), (600, 0))
        self.assertEqual(reserved, PRICE)  # the one message held against it, not yet sent

    async def test_a_cut_through_this_gateway_ends_its_leases_before_the_answer(self):
        """jCli on this gateway (runtime.wallet_cut): no tick to wait for; other wallets'
        leases stay."""
        clock, store = await setup(self)
        published = Published()
        book = LeaseBook(store, clock, published, messages=4)
        periods, lease = await leased(store, book)
        await store.top_up("bob", 1000, op_id="fund-bob", actor="test")
        _, bobs = await leased(store, book, "bob")
        book.end_wallet(UID)
        self.assertEqual(book.open(), [bobs])
        self.assertIsNone(book.hold(UID, PRICE, periods))
        book.end_wallet("nobody")  # no lease: nothing to do
        clock.advance(book.end_delay)
        self.assertEqual(published.ends, [(UID, lease.id)])

    async def test_tick_checks_epochs_and_redis_down_is_retried(self):
        clock, store = await setup(self)
        book = LeaseBook(store, clock, Published(), messages=4)
        _, lease = await leased(store, book)
        await store.configure(UID, {"low_balance": 10})
        real = store.lease_epochs

        async def down(uids):
            raise StoreUnavailable("redis down")

        store.lease_epochs = down
        with self.assertLogs("jasmin-credits", "INFO") as logged:
            book.tick()
        self.assertIn("cannot check credit leases", logged.output[0])
        self.assertEqual(book.open(), [lease])
        store.lease_epochs = real
        await book.check_epochs()  # what the next tick does
        self.assertEqual(book.open(), [])


async def named_book(store, clock, gateway, published=None, **kw):
    """A lease book holding the gateway name ``gateway`` (claimed in Redis)."""
    book = LeaseBook(store, clock, published or Published(), messages=4, gateway=gateway,
                     **kw)
    await book.keep_name()
    return book


async def asked(book):
    """Ask for alice's lease and wait for the answer: the book's open leases."""
    book.ask(UID, PRICE)
    await book.requests()
    return book.open()


async def claim_expired(store, gateway):
    """What Redis does ``ttl`` after the process holding ``gateway`` died."""
    await store._command("DEL", store.keys.gateway_claim(gateway))


class PredecessorLeaseTests(TestCase):
    """A gateway that died left leases open; started again under the same name, it ends
    them (with markers behind what it queued), not its own, nor another gateway's."""

    async def test_restarted_gateway_ends_what_its_previous_run_left(self):
        clock, store = await setup(self)
        dead = await named_book(store, clock, "gw-a")
        other = await named_book(store, clock, "gw-b")
        [left] = await asked(dead)  # dead: never stopped, no marker
        [kept] = await asked(other)

        up = [False]
        published = Published()
        restarted = await named_book(store, clock, "gw-a", published, ready=lambda: up[0])
        self.assertFalse(restarted.name.held)  # the dead run's claim lives on for a while
        self.assertEqual(await asked(restarted), [])  # no lease without the name
        await claim_expired(store, "gw-a")
        await restarted.keep_name()
        self.assertTrue(restarted.name.held)
        [own] = await asked(restarted)  # its own, taken before it could publish markers
        self.assertEqual(published.ends, [])  # not before jasmind's channel is ready
        up[0] = True
        await restarted.keep_name()
        self.assertEqual(await restarted.predecessors, 1)
        self.assertEqual(published.ends, [(UID, left.id)])
        # settlement reads the marker behind the dead run's messages, and ends the lease
        await Settlement(store).submit_sm(b"", lease_end_marker(UID, left.id)["content"]
                                          .properties)
        self.assertEqual(await store.gateway_leases("gw-a"), [(UID, own.id)])
        self.assertEqual(await store.gateway_leases("gw-b"), [(UID, kept.id)])
        await restarted.keep_name()  # once is enough
        self.assertEqual(published.ends, [(UID, left.id)])

    async def test_redis_down_at_start_is_retried_on_the_next_tick(self):
        clock, store = await setup(self)
        dead = await named_book(store, clock, "gw-a")
        [left] = await asked(dead)
        await claim_expired(store, "gw-a")
        published = Published()
        restarted = LeaseBook(store, clock, published, messages=4, gateway="gw-a")
        real = store.gateway_leases

        async def unavailable(gateway):
            raise StoreUnavailable("Redis connection failed")

        store.gateway_leases = unavailable
        with self.assertLogs("jasmin-credits", "INFO") as logged:
            await restarted.keep_name()
        self.assertIn("retrying", logged.output[0])
        self.assertFalse(restarted.predecessors.called)
        store.gateway_leases = real
        restarted.tick()  # the timer's path
        self.assertEqual(await restarted.predecessors, 1)
        self.assertEqual(published.ends, [(UID, left.id)])

    def test_default_gateway_name_is_host_and_lock_file(self):
        name = default_gateway_name("/var/run/jasmind 2")
        self.assertTrue(name.endswith(":/var/run/jasmind_2"), name)
        self.assertEqual(name, default_gateway_name("/var/run/jasmind 2"))
        self.assertNotEqual(name, default_gateway_name("/tmp/other"))


class GatewayNameTests(TestCase):
    """One running gateway per name: a second one under the same name takes no lease (it
    would end the first's live leases at its start) and says why."""

    async def test_second_gateway_under_one_name_takes_no_lease_and_says_so(self):
        clock, store = await setup(self)
        first = await named_book(store, clock, "gw-a")
        [lease] = await asked(first)
        second = await named_book(store, clock, "gw-a")
        self.assertEqual((first.name.held, second.name.held), (True, False))
        self.assertEqual(await asked(second), [])
        self.assertFalse(second.predecessors.called)  # the first's leases are untouched
        clock.advance(second.name.ttl - 1)
        await first.keep_name()  # the first renews its claim: it is alive
        await second.keep_name()  # refused for less than a claim's life: maybe a dead run
        clock.advance(1)
        with self.assertLogs("jasmin-credits", "ERROR") as logged:
            await second.keep_name()
        self.assertIn("gw-a is in use by another running gateway", logged.output[0])
        self.assertIn("charging.lease.gateway", logged.output[0])
        self.assertEqual(first.open(), [lease])
        self.assertEqual(await store.gateway_leases("gw-a"), [(UID, lease.id)])
        await first.stop()  # a clean stop gives the name up
        with self.assertLogs("jasmin-credits", "WARNING") as logged:
            await second.keep_name()
        self.assertIn("free again", logged.output[0])
        self.assertTrue(second.name.held)

    async def test_name_lost_while_stalled_ends_the_leases_held_on_it(self):
        clock, store = await setup(self)
        published = Published()
        stalled = await named_book(store, clock, "gw-a", published)
        [lease] = await asked(stalled)
        await claim_expired(store, "gw-a")  # it stalled past its claim's life...
        await named_book(store, clock, "gw-a")  # ...and another took the name
        with self.assertLogs("jasmin-credits", "ERROR") as logged:
            await stalled.keep_name()
        self.assertIn("taken over", logged.output[0])
        self.assertEqual(stalled.open(), [])
        periods = store.period_ids(store.now_ms())
        self.assertIsNone(stalled.hold(UID, PRICE, periods))
        clock.advance(stalled.end_delay)
        self.assertEqual(published.ends, [(UID, lease.id)])

    async def test_claim_expires_and_is_given_up_only_by_its_holder(self):
        _, store = await setup(self)
        self.assertIsNone(await store.claim_gateway("gw-a", "one", 10_000))
        self.assertEqual(await store.claim_gateway("gw-a", "two", 10_000), "one")
        self.assertEqual(await store.claim_gateway("gw-a", "two", 0), "one")  # not its own
        ttl = await store._command("PTTL", store.keys.gateway_claim("gw-a"))
        self.assertTrue(9_000 < ttl <= 10_000, ttl)
        self.assertIsNone(await store.claim_gateway("gw-a", "one", 0))
        self.assertIsNone(await store.claim_gateway("gw-a", "two", 10_000))


def submit_sm_properties(header: str, msgid: str = "m1") -> dict:
    return {"message-id": msgid, "headers": {TAG_HEADER: header}}


class SettlementOfLeasedHoldsTests(TestCase):
    async def open_lease(self):
        """A store with a lease of alice, settlement on it, and a new ref."""
        _, store = await setup(self)
        lid = lease_id(store)
        await store.take_lease(UID, lid, 100, 10, least=PRICE, deadline_ms=deadline(store))
        return store, lid, Settlement(store), new_ref(store.now_ms())

    async def test_tag_writes_the_hold_links_it_and_the_marker_ends_the_lease(self):
        store, lid, settlement, ref = await self.open_lease()
        header = f"{UID} {ref} 2 {lease_field(lid, PRICE, 1, QUOTE)}"
        self.assertEqual(await settlement.submit_sm(b"", submit_sm_properties(header)),
                         Outcome.SETTLED)
        await store.settle_message("m1", True)
        self.assertEqual(await books(self, store), (980, 80, 80))
        marker = lease_end_marker(UID, lid)
        self.assertEqual(marker["routing_key"], "submit.sm.jasmin_credits_lease_end")
        properties = marker["content"].properties
        self.assertEqual(await settlement.submit_sm(b"", properties), Outcome.SETTLED)
        self.assertEqual(await books(self, store), (980, 0, 0))

    async def test_malformed_lease_tags_and_markers_change_nothing(self):
        store, lid, settlement, ref = await self.open_lease()
        bad = [
            f"{UID} {ref} 1 {lid} ten 1 {QUOTE}",
            f"{UID} {ref} 1 {lid} 10 0 {QUOTE}",
            f"{UID} {ref} 1 notaref 10 1 {QUOTE}",
            f"{UID} {ref} 1 {lid} 10 1",
            f"{UID} {ref} 1 {lid} 10 1 bad\nquote",
            f"{UID} {ref} 1 {lid} 10 1 {'x' * 400}",
        ]
        for header in bad:
            outcome = await settlement.submit_sm(b"", submit_sm_properties(header))
            self.assertEqual(outcome, Outcome.MALFORMED, header)
        for value in ("alice", f"al ice {lid}", f"{UID} nope", ""):
            outcome = await settlement.submit_sm(b"", {"headers": {LEASE_END_HEADER: value}})
            self.assertEqual(outcome, Outcome.MALFORMED, value)
        self.assertEqual(await books(self, store), (1000, 100, 100))
        self.assertEqual(await store.reservation(UID, ref), {})


async def field(store, name: str, uid: str = UID) -> int:
    """One integer field of ``uid``'s wallet hash (0 when absent)."""
    value = await store._command("HGET", store.keys.wallet(uid), name)
    return int(value or 0)


async def settle_held(store, lid: str, refs: list[str], first_msgid: int = 1) -> None:
    """What settlement does with leased messages' events: hold, link, then the SMSC's OK."""
    for n, ref in enumerate(refs, first_msgid):
        linked = await store.link_leased(UID, ref, f"m{n}", lid, PRICE, 1, 1, QUOTE)
        assert linked.found
        await store.settle_message(f"m{n}", True)


class CutShrinksLeaseTests(TestCase):
    """An operator's cut gives a lease's unused part back at once (``lua/lease_shrink.lua``):
    the QA bug was ~1 s of false refusals and a false ``limit_reached`` after ``credit -u``
    lowered a limit, the ended lease still counting whole against it until its marker."""

    async def open_book(self):
        """A wallet of 100,000 with 11 messages used today, and a book of 100-message
        leases holding 3 of them in memory: (clock, store, book, lease, refs)."""
        clock, store = await setup(self, balance=100_000)
        for _ in range(11):
            self.assertTrue((await store.reserve(UID, PRICE, 1)).ok)
        book = LeaseBook(store, clock, Published(), messages=100)
        periods, lease = await leased(store, book)
        self.assertEqual((lease.credits, lease.messages), (100 * PRICE, 100))
        for _ in range(2):
            self.assertIs(book.hold(UID, PRICE, periods), lease)
        refs = [new_ref(store.now_ms()) + str(n) for n in range(3)]
        return clock, store, book, lease, refs

    async def assert_next_message_accepted(self, store, limits: dict[str, int]):
        await store.configure(UID, limits)
        self.assertTrue((await store.reserve(UID, PRICE, 1)).ok)
        events, _ = await store.events(UID)
        self.assertNotIn("limit_reached", [e.type for e in events])

    async def test_lower_message_limit_judges_the_next_message_on_real_usage(self):
        """QA: lease open, daily_messages lowered to 60 with 14 used: the next message is
        accepted at once (no 429 for a second) and no limit_reached is recorded."""
        _, store, book, lease, refs = await self.open_book()
        await settle_held(store, lease.id, refs[:1])
        await store.configure(UID, {"lim:msgs:day": 60})
        await book.end_wallet(UID)  # what jCli awaits before its answer
        self.assertEqual(await field(store, "leased_msgs"), 2)  # the two on their way
        await self.assert_next_message_accepted(store, {})
        self.assertIsNone(book.hold(UID, PRICE, store.period_ids(store.now_ms())))

    async def test_lower_credit_limit_judges_the_next_message_on_real_usage(self):
        """QA with ``daily`` (a credit limit) lowered under the lease's whole credit."""
        _, store, book, _, _ = await self.open_book()
        await store.configure(UID, {"lim:credits:day": 20 * PRICE})
        await book.end_wallet(UID)
        self.assertEqual(await field(store, "leased"), 3 * PRICE)
        await self.assert_next_message_accepted(store, {})

    async def books_after_every_event(self, store, lease, refs, before: int,
                                      debited: int = 0):
        """Settle the lease's 3 messages (``before`` of them were settled before the shrink)
        and its marker: each charged once from the lease, nothing left reserved or leased
        (the 11 messages held one by one stay reserved),
        the credit log summing to the balance."""
        await settle_held(store, lease.id, refs[before:], first_msgid=before + 1)
        self.assertEqual(await store.end_lease(UID, lease.id), 0)  # the marker: nothing left
        self.assertEqual(await books(self, store),
                         (100_000 - debited - 3 * PRICE, 11 * PRICE, 0))
        self.assertEqual(await field(store, "leased_msgs"), 0)
        charges = [e for e in (await store.log(UID, count=100))[0] if e.type == "charge"]
        self.assertEqual(sorted(e.fields["msgid"] for e in charges), ["m1", "m2", "m3"])
        events, _ = await store.events(UID)
        self.assertNotIn("late_hold", [e.type for e in events])
        usage = (await store.wallet(UID)).usage[0]
        self.assertEqual((usage.credits, usage.msgs), (14 * PRICE, 14))

    async def test_holds_settled_before_the_shrink_then_the_rest_then_the_marker(self):
        """Two holds written before the cut, one after: the shrunk lease keeps exactly it."""
        _, store, book, lease, refs = await self.open_book()
        await settle_held(store, lease.id, refs[:2])
        await store.configure(UID, {"lim:msgs:day": 60})
        await book.end_wallet(UID)
        self.assertEqual(await books(self, store),
                         (100_000 - 2 * PRICE, 11 * PRICE + PRICE, PRICE))
        await self.books_after_every_event(store, lease, refs, before=2)

    async def test_holds_settled_after_the_shrink_then_the_marker(self):
        """Every hold written after the shrink: the lease kept the 3 messages' credit."""
        _, store, book, lease, refs = await self.open_book()
        await store.top_up(UID, -PRICE, op_id="debit", actor="ops")
        await book.end_wallet(UID)
        self.assertEqual(await books(self, store),
                         (100_000 - PRICE, 11 * PRICE + 3 * PRICE, 3 * PRICE))
        await self.books_after_every_event(store, lease, refs, before=0, debited=PRICE)

    async def test_shrink_is_idempotent_and_a_no_op_after_the_end(self):
        """A repeated shrink gives nothing more; after the marker, nothing at all; a
        message the gateway never queued comes back with the marker, once."""
        _, store = await setup(self, balance=100_000)
        lid = lease_id(store)
        await store.take_lease(UID, lid, 1000, 100, least=PRICE, deadline_ms=deadline(store))
        refs = [new_ref(store.now_ms()) + str(n) for n in range(2)]
        for ref in refs:
            await store.hold_leased(UID, ref, lid, PRICE, 1, 1, QUOTE)
        # the gateway held 3 (one of them Jasmin will never queue)
        self.assertEqual(await store.shrink_lease(UID, lid, 3 * PRICE, 3), (970, 97))
        self.assertEqual(await store.shrink_lease(UID, lid, 3 * PRICE, 3), (0, 0))
        self.assertEqual(await books(self, store), (100_000, 3 * PRICE, PRICE))
        self.assertEqual(await field(store, "leased_msgs"), 1)
        self.assertEqual(await store.end_lease(UID, lid), PRICE)
        self.assertIsNone(await store.shrink_lease(UID, lid, 3 * PRICE, 3))
        self.assertEqual(await books(self, store), (100_000, 2 * PRICE, 0))
        self.assertEqual(await field(store, "leased_msgs"), 0)

    async def test_shrink_never_gives_back_more_than_the_lease_has_left(self):
        """Holds beyond what the gateway counted (a forged tag) leave it at zero: a later
        one is held from the wallet (late_hold), charged once."""
        _, store = await setup(self, balance=100_000)
        lid = lease_id(store)
        await store.take_lease(UID, lid, 1000, 100, least=PRICE, deadline_ms=deadline(store))
        for n in range(2):
            await store.hold_leased(UID, new_ref(store.now_ms()) + str(n), lid, PRICE, 1, 1,
                                    QUOTE)
        self.assertEqual(await store.shrink_lease(UID, lid, PRICE, 1), (980, 98))
        self.assertEqual(await store.shrink_lease(UID, lid, 0, 0), (0, 0))
        late = new_ref(store.now_ms()) + "x"
        await store.hold_leased(UID, late, lid, PRICE, 1, 1, QUOTE)
        self.assertEqual(await books(self, store), (100_000, 3 * PRICE, 0))
        self.assertEqual(await store.end_lease(UID, lid), 0)
        self.assertEqual(await field(store, "leased_msgs"), 0)
        events, _ = await store.events(UID)
        self.assertIn("late_hold", [e.type for e in events])

    async def test_another_gateway_shrinks_on_its_epoch_check_and_jcli_waits_for_it(self):
        """A gateway that learns of the cut by its epoch check (or the announcement) shrinks
        its leases too; the cut's own end_wallet, finding them ended already, still waits
        for that shrink (the announcement can beat jCli's answer from Redis)."""
        _, store, book, lease, _ = await self.open_book()
        gate: Deferred = Deferred()
        real = store.shrink_lease

        async def slow(*args):
            await gate  # (Redis slow to answer)
            return await real(*args)

        store.shrink_lease = slow
        await store.configure(UID, {"lim:msgs:day": 60})
        await book.check_epochs()
        self.assertEqual(book.open(), [])
        cut = book.end_wallet(UID)
        self.assertNoResult(cut)
        gate.callback(None)
        await cut
        self.assertEqual((await field(store, "leased"), await field(store, "leased_msgs")),
                         (3 * PRICE, 3))
        await self.assert_next_message_accepted(store, {})
