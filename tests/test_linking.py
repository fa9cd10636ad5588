"""Linking holds as Jasmin queues their messages (``settlement.link: queueing``): the wrapper
around Jasmin's own ``perspective_submit_sm`` on fakes, and exactly-once on real Redis."""

from __future__ import annotations

import logging
import pickle

from jasmin.managers.clients import SMPPClientManagerPB
from smpp.pdu.operations import SubmitSM
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jasmin_credits.errors import StoreUnavailable
from jasmin_credits.leasing import default_gateway_name
from jasmin_credits.linking import LinkingSubmitSm, QueueingLinker, install
from jasmin_credits.metrics import CreditMetrics
from jasmin_credits.settlement import Settlement, tag_pdu

from .test_settlement import UID, charges, funded, hold, money, resp, wire

REF = "1795000000000-abcdef012345"


class Flaky:
    """Fails its first ``failures`` calls with StoreUnavailable (-1: every call), every call
    with ``error`` if set; counts ``attempts``."""

    def __init__(self, failures: int = 0, error: Exception | None = None):
        self.failures = failures
        self.error = error
        self.attempts = 0

    def attempt(self) -> None:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("injected")


class FakeStore(Flaky):
    """Records ``link`` calls, failing as :class:`Flaky` says."""

    def __init__(self, failures: int = 0, error: Exception | None = None):
        super().__init__(failures, error)
        self.links: list[tuple[str, str, str, int]] = []

    async def link(self, uid: str, ref: str, msgid: str, parts: int, lazy: bool = False):
        self.attempt()
        self.links.append((uid, ref, msgid, parts))

        class Settled:
            found = True
        return Settled()


class FakeBroker:
    """Jasmin's AmqpFactory as perspective_submit_sm uses it: publishing is immediate."""

    connected = True

    def __init__(self):
        self.published = []

    def publish(self, exchange, routing_key, content):
        self.published.append((routing_key, content))
        return succeed(None)


def client_manager() -> SMPPClientManagerPB:
    """Jasmin's SMPPClientManagerPB with one connector ``smsc`` and a fake broker."""
    manager = SMPPClientManagerPB.__new__(SMPPClientManagerPB)
    manager.log = logging.getLogger("test-smppcm")
    manager.connectors = [{"id": "smsc"}]
    manager.amqpBroker = FakeBroker()
    manager.redisClient = None
    manager.pickleProtocol = pickle.HIGHEST_PROTOCOL
    return manager


def pdu(tagged: bool = True, chain: int = 1, parts: int = 1) -> SubmitSM:
    """A SubmitSM (head of a ``chain``-PDU chain), tagged with ``parts`` parts of REF."""
    pdus = [SubmitSM(seqNum=i + 1, source_addr=b"JC", destination_addr=b"33612345678",
                     short_message=b"part %d" % i) for i in range(chain)]
    for first, nxt in zip(pdus, pdus[1:], strict=False):
        first.nextPdu = nxt
    if tagged:
        tag_pdu(pdus[0], UID, REF, parts)
    return pdus[0]


def submit(manager, submit_sm_pdu, **kw):
    """Call the manager as Jasmin's SMPP server and HTTP API do (keywords, pickled=False)."""
    return manager.perspective_submit_sm(uid=UID, cid="smsc", SubmitSmPDU=submit_sm_pdu,
                                         submit_sm_bill=None, priority=0, pickled=False, **kw)


class WrapperTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = FakeStore()
        self.metrics = CreditMetrics()
        self.linker = QueueingLinker(self.store, clock=self.clock, metrics=self.metrics,
                                     give_up_after=60)
        self.manager = client_manager()
        install(self.manager, self.linker)

    def published_msgid(self) -> str:
        return self.manager.amqpBroker.published[-1][1].properties["message-id"]

    def test_returns_jasmins_message_id_and_links_the_hold(self):
        """Jasmin's caller reads the message id at once; the hold is linked under it."""
        d = submit(self.manager, pdu(parts=1))
        msgid = self.published_msgid()
        self.assertEqual(d.result, msgid)  # what Jasmin's SMPP server reads
        self.assertEqual(self.store.links, [(UID, REF, msgid, 1)])
        self.assertEqual(self.linker.linked, 1)

    def test_wrapper_is_on_the_instance_only(self):
        """Jasmin's class keeps its own method; installing twice wraps once."""
        self.assertIsInstance(self.manager.perspective_submit_sm, LinkingSubmitSm)
        self.assertNotIsInstance(client_manager().perspective_submit_sm, LinkingSubmitSm)
        wrapper = self.manager.perspective_submit_sm
        self.assertIs(install(self.manager, self.linker), wrapper)
        self.assertIsNot(wrapper.submit_sm, wrapper)
        self.assertNotIsInstance(wrapper.submit_sm, LinkingSubmitSm)

    def test_http_chain_links_every_part_once(self):
        """A /send chain (head tagged with 3 parts) is one message id and one 3-part link."""
        d = submit(self.manager, pdu(chain=3, parts=3))
        self.assertEqual(self.store.links, [(UID, REF, d.result, 3)])

    def test_untagged_pdu_is_left_alone(self):
        """A message we did not charge is queued as usual and nothing is linked."""
        d = submit(self.manager, pdu(tagged=False))
        self.assertEqual(d.result, self.published_msgid())
        self.assertEqual((self.store.attempts, d.callbacks), (0, []))

    def test_pickled_pdu_from_a_remote_caller_is_left_alone(self):
        """pickled=True (a PB client): the PDU is bytes, never tagged by us here."""
        body = pickle.dumps(pdu())
        d = self.manager.perspective_submit_sm(UID, "smsc", body, None)
        self.assertEqual(d.result, self.published_msgid())
        self.assertEqual(self.store.attempts, 0)

    def test_not_queued_means_not_linked(self):
        """Jasmin answers False (unknown connector, broker down): no link, False returned."""
        self.manager.amqpBroker.connected = False
        self.assertIs(submit(self.manager, pdu()).result, False)
        self.assertEqual(self.store.attempts, 0)

    def test_jasmins_failure_passes_through(self):
        """An error in Jasmin's method reaches Jasmin's caller unchanged."""
        wrapper = LinkingSubmitSm(lambda *a, **kw: fail(RuntimeError("jasmin")), self.linker)
        self.failureResultOf(wrapper(SubmitSmPDU=pdu()), RuntimeError)
        self.assertEqual(self.store.attempts, 0)

    def test_store_unavailable_retried_then_linked(self):
        """Redis away: Jasmin has its id at once; the link is retried with back-off."""
        self.store.failures = 3
        d = submit(self.manager, pdu())
        self.assertEqual(d.result, self.published_msgid())
        self.assertEqual((self.store.attempts, self.linker.waiting), (1, 1))
        for delay in (0.5, 1.0, 2.0):  # doubling from initial_delay
            self.clock.advance(delay - 0.01)
            attempts = self.store.attempts
            self.clock.advance(0.01)
            self.assertEqual(self.store.attempts, attempts + 1)
        self.assertEqual(self.store.links, [(UID, REF, d.result, 1)])
        self.assertEqual((self.linker.pending, self.linker.waiting), (0, 0))
        self.assertEqual(self.metrics.link_retries.value(), 3)
        self.assertEqual(self.metrics.links_given_up.value(), 0)

    def test_store_unavailable_given_up_after_the_bound(self):
        """Redis never back: attempts stop after give_up_after seconds, counted, no raise."""
        self.store.failures = -1
        d = submit(self.manager, pdu())
        self.assertEqual(d.result, self.published_msgid())
        self.clock.pump([1.0] * 120)
        self.assertEqual((self.linker.given_up, self.linker.pending), (1, 0))
        self.assertEqual(self.metrics.links_given_up.value(), 1)
        # 0.5 + 1 + 2 + 4 + 8 + 16 + 30 = 61.5 > 60: six retries after the first attempt
        self.assertEqual(self.store.attempts, 7)
        self.assertEqual(self.store.links, [])

    def test_malformed_tag_given_up_at_once(self):
        """A tag that does not read back is not retried (it never will)."""
        bad = pdu(tagged=False)
        tag_pdu(bad, "bad uid", REF, 1)
        self.assertEqual(submit(self.manager, bad).result, self.published_msgid())
        self.assertEqual((self.store.attempts, self.linker.given_up), (0, 1))

    def test_unexpected_error_retried_then_given_up_without_raising(self):
        """Any other error in the store is logged, tried again 5 s later up to 5 attempts
        (as settlement's consumer does), counted, and never raised into Jasmin."""
        self.store.error = RuntimeError("bug")
        with self.assertLogs("jasmin-credits", "ERROR") as logged:
            d = submit(self.manager, pdu())
            self.assertEqual(d.result, self.published_msgid())
            self.assertEqual((self.store.attempts, self.linker.given_up), (1, 0))
            for attempts in (2, 3, 4, 5):
                self.clock.advance(4.99)
                self.assertEqual(self.store.attempts, attempts - 1)
                self.clock.advance(0.01)
                self.assertEqual(self.store.attempts, attempts)
        self.assertEqual((self.linker.given_up, self.linker.pending), (1, 0))
        self.assertIn("(attempt 1 of 5): tried again in 5s", logged.output[0])
        self.assertIn("RuntimeError: bug", logged.output[-1])
        self.assertEqual((self.metrics.link_retries.value(),
                          self.metrics.links_given_up.value()), (4, 1))
        self.clock.advance(60)
        self.assertEqual(self.store.attempts, 5)

    def test_unexpected_error_that_passes_links(self):
        """A fault that passes (one failed attempt) loses nothing: the retry links."""
        self.store.error = RuntimeError("passing fault")
        with self.assertLogs("jasmin-credits", "ERROR"):
            d = submit(self.manager, pdu())
        self.store.error = None
        self.clock.advance(5)
        self.assertEqual(self.store.links, [(UID, REF, d.result, 1)])
        self.assertEqual((self.linker.given_up, self.linker.done), (0, 1))

    def test_broken_linker_never_reaches_jasmin(self):
        """Even a linker that raises leaves Jasmin's answer as it was."""
        class Broken(QueueingLinker):
            def submitted(self, msgid, pdu):
                raise RuntimeError("broken")

        manager = client_manager()
        install(manager, Broken(self.store, clock=self.clock, metrics=self.metrics))
        d = submit(manager, pdu())
        self.assertEqual(d.result,
                         manager.amqpBroker.published[-1][1].properties["message-id"])
        self.assertEqual(self.metrics.links_given_up.value(), 1)

    def test_stop_tries_waiting_links_once_more(self):
        """At stop a waiting link is tried at once; if the store is back it is linked."""
        self.store.failures = 1
        d = submit(self.manager, pdu())
        self.assertEqual(self.linker.waiting, 1)
        stopped = self.linker.stop()
        self.successResultOf(stopped)
        self.assertEqual(self.store.links, [(UID, REF, d.result, 1)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_gives_up_what_still_fails(self):
        """At stop a link whose store is still away is given up after one more try."""
        self.store.failures = -1
        submit(self.manager, pdu())
        self.successResultOf(self.linker.stop())
        self.assertEqual((self.store.attempts, self.linker.given_up), (2, 1))
        submit(self.manager, pdu())  # after stop: tried once, not retried
        self.assertEqual((self.store.attempts, self.linker.given_up), (3, 2))

    def test_waiting_links_are_bounded(self):
        """Past max_waiting links waiting, a new link is tried once and not kept."""
        self.linker.max_waiting = 2
        self.store.failures = -1
        for _ in range(3):
            submit(self.manager, pdu())
        self.assertEqual((self.linker.waiting, self.linker.given_up), (2, 1))


class SlowStoreTests(SynchronousTestCase):
    def test_jasmin_never_waits_for_the_link(self):
        """The message id is returned while the link's Redis call is still in flight."""
        answer: Deferred = Deferred()

        class Slow(FakeStore):
            async def link(self, *args, lazy=False):
                self.links.append(args)
                return await answer

        store = Slow()
        manager = client_manager()
        install(manager, QueueingLinker(store, clock=Clock()))
        d = submit(manager, pdu())
        self.assertEqual(d.result, manager.amqpBroker.published[-1][1].properties["message-id"])
        self.assertEqual(len(store.links), 1)
        answer.callback(type("Settled", (), {"found": True})())


class ExactlyOnceTests(TestCase):
    async def test_link_at_queueing_and_from_the_event_settle_once(self):
        """A settled still consuming submit.sm.* links again: harmless, charged once."""
        store = await funded(self)
        ref = await hold(store, parts=3)
        manager = client_manager()
        linker = QueueingLinker(store, clock=Clock())
        install(manager, linker)
        message = pdu(chain=3, parts=3)
        tag_pdu(message, UID, ref, 3)
        msgid = submit(manager, message).result
        await linker.stop()  # the link has been written
        self.assertEqual(linker.linked, 1)
        settlement = Settlement(store)
        [(_, content)] = manager.amqpBroker.published  # the submit.sm.smsc event
        body, properties = wire(content)
        await settlement.submit_sm(body, properties)  # the old consumer's link
        await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_ROK")))
        await settlement.submit_sm(body, properties)  # a redelivery after the charge
        self.assertEqual(await money(store), (1000 - 3 * 10, 0))
        [charge] = await charges(store)
        self.assertEqual((charge.fields["msgid"], charge.fields["parts"]), (msgid, "3"))

    async def test_response_before_the_link_is_applied_by_it(self):
        """The SMSC's answer may arrive before the link is written: the link applies it."""
        store = await funded(self)
        ref = await hold(store)
        message = pdu()
        tag_pdu(message, UID, ref, 1)
        msgid = "m-early"
        await Settlement(store).submit_sm_resp(*wire(resp(msgid, "ESME_ROK")))
        linker = QueueingLinker(store, clock=Clock())
        linker.submitted(msgid, message)
        await linker.stop()
        self.assertEqual(await money(store), (1000 - 10, 0))


async def unstarted_runtime(test, **settlement):
    """A runtime on the test Redis with these ``settlement`` settings (``link: queueing``
    unless they say otherwise), not started."""
    settlement = {"link": "queueing", **settlement}
    import os

    from twisted.internet import reactor

    from jasmin_credits.config import parse_config
    from jasmin_credits.runtime import CreditsRuntime

    from .redis_support import connect

    config = parse_config({"redis": {"port": int(os.environ["JC_TEST_REDIS_PORT"])},
                           "settlement": settlement}, "test.yaml")
    return CreditsRuntime(config, reactor=reactor, redis=await connect(test))


class RuntimeTests(TestCase):
    async def runtime(self, **settlement):
        return await unstarted_runtime(self, **settlement)

    async def test_queueing_wraps_the_client_manager_and_stops_with_the_runtime(self):
        """link: queueing installs the linker on jasmind's manager; the runtime stops it."""
        runtime = await self.runtime()
        manager = client_manager()
        linker = runtime.install_client_manager(manager)
        self.assertIsInstance(linker, QueueingLinker)
        self.assertIs(manager.perspective_submit_sm.linker, linker)
        self.assertEqual(linker.give_up_after, 6 * 3600)  # the store's pending_outcome_ttl
        self.assertEqual(runtime.services, [linker])  # (the runtime was not started)
        await runtime.stop()
        self.assertTrue(linker._stopping)

    async def test_settlement_disabled_links_nothing(self):
        """settlement.enabled: false: this process settles nothing, links included."""
        runtime = await self.runtime(enabled=False)
        manager = client_manager()
        self.assertIsNone(runtime.install_client_manager(manager))
        self.assertNotIsInstance(manager.perspective_submit_sm, LinkingSubmitSm)

    async def test_events_only_repeats_the_tag_in_headers(self):
        """link: events: no linker; perspective_submit_sm only gains the tag header
        (tests/test_tagheaders.py), also when another process settles. Credit leases start
        by default, unless this process settles nothing (settlement.enabled: false)."""
        for enabled in (True, False):
            runtime = await self.runtime(link="events", enabled=enabled)
            manager = client_manager()
            self.assertIsNone(runtime.install_client_manager(manager))
            self.addCleanup(runtime.stop)
            self.assertNotIsInstance(manager.perspective_submit_sm, LinkingSubmitSm)
            self.assertIs(manager.perspective_submit_sm.__self__, runtime.tag_headers)
            self.assertEqual(getattr(runtime.charger, "leases", None) is not None, enabled)

    async def test_leases_take_the_configured_gateway_name_or_host_and_lock_file(self):
        """charging.lease: the lease book names its leases after charging.lease.gateway, or
        the host name and the launcher's lock file, and publishes markers once jasmind's AMQP
        connection is up with settlement's queue declared on it (the MarkerRoute: see
        tests/test_marker_route.py and, with a real broker, test_lease_marker_route.py)."""
        import os

        from twisted.internet import reactor

        from jasmin_credits.config import parse_config
        from jasmin_credits.marker_route import MarkerRoute
        from jasmin_credits.runtime import CreditsRuntime

        from .redis_support import connect

        for gateway, lock_file, expected in (("gw-paris-1", "/run/a", "gw-paris-1"),
                                             (None, "/run/b", default_gateway_name("/run/b"))):
            lease = {"messages": 10} if gateway is None else {"messages": 10,
                                                              "gateway": gateway}
            config = parse_config({"redis": {"port": int(os.environ["JC_TEST_REDIS_PORT"])},
                                   "charging": {"lease": lease}}, "test.yaml")
            runtime = CreditsRuntime(config, reactor=reactor, redis=await connect(self))
            runtime.lock_file = lock_file  # what the launcher sets
            manager = client_manager()
            runtime.install_client_manager(manager)
            self.addCleanup(runtime.stop)
            book = runtime.charger.leases
            self.assertEqual((book.gateway, book.messages), (expected, 10))
            route = getattr(book.ready, "__self__", None)
            self.assertIsInstance(route, MarkerRoute)
            self.assertIs(route.factory, manager.amqpBroker)
            manager.amqpBroker.connected = False
            self.assertFalse(book.ready())

    async def test_queueing_adds_no_tag_header(self):
        """link: queueing: settlement reads no submit.sm.* message, so no header."""
        runtime = await self.runtime()
        runtime.install_client_manager(client_manager())
        self.assertIsNone(runtime.tag_headers)
