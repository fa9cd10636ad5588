"""Settling the SMSC's answers as jasmind publishes them (``settlement.link: queueing``): the
wrapper around Jasmin's own ``AmqpFactory.publish`` on fakes, and exactly-once on real Redis."""

from __future__ import annotations

import logging

from jasmin.managers.content import SubmitSmContent
from jasmin.queues.factory import AmqpFactory
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jasmin_credits.linking import QueueingLinker
from jasmin_credits.metrics import CreditMetrics
from jasmin_credits.observing import ObservingPublish, OutcomeObserver, install
from jasmin_credits.settlement import Outcome, Settlement, tag_pdu

from .test_linking import Flaky, pdu, unstarted_runtime
from .test_settlement import UID, charges, funded, hold, money, receipt, resp, smpp_id_of

RESP, DLR = "dlr.submit_sm_resp", "dlr.deliver_sm"


class FakeSettlement(Flaky):
    """Records handler calls, failing as :class:`~tests.test_linking.Flaky` says."""

    def __init__(self, dlr_refund_stats=frozenset(), failures: int = 0):
        super().__init__(failures)
        self.dlr_refund_stats = frozenset(dlr_refund_stats)
        self.calls: list[tuple[str, object, object]] = []

    async def _handle(self, what, body, properties):
        self.attempt()
        self.calls.append((what, body, properties))
        return Outcome.SETTLED

    async def submit_sm_resp(self, body, properties):
        return await self._handle(RESP, body, properties)

    async def deliver_sm(self, body, properties):
        return await self._handle(DLR, body, properties)


class FakeChannel:
    """The channel behind a connected AmqpFactory: ``basic_publish`` records and answers."""

    def __init__(self):
        self.published: list[tuple[str, str, object]] = []
        self.answer: object = None

    def basic_publish(self, exchange, routing_key, content):
        self.published.append((exchange, routing_key, content))
        return self.answer if self.answer is not None else succeed(None)


def jasmin_factory(connected: bool = True) -> AmqpFactory:
    """Jasmin's own AmqpFactory (its real ``publish``), with a fake channel."""
    factory = AmqpFactory.__new__(AmqpFactory)
    factory.log = logging.getLogger("test-amqp-factory")
    factory.connected = connected
    factory.chan = FakeChannel()
    return factory


def publish(factory, content, routing_key: str = RESP, exchange: str = "messaging"):
    """Publish as Jasmin's SMPP client listener does (keywords only)."""
    return factory.publish(exchange=exchange, routing_key=routing_key, content=content)


class WrapperTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.settlement = FakeSettlement(dlr_refund_stats={"UNDELIV"})
        self.metrics = CreditMetrics()
        self.observer = OutcomeObserver(self.settlement, clock=self.clock,
                                        metrics=self.metrics, give_up_after=60)
        self.factory = jasmin_factory()
        install(self.factory, self.observer)

    def test_returns_jasmins_result_unchanged_and_settles(self):
        """Jasmin gets its own publish's result; the handler gets the event's body and
        properties, as Jasmin built them."""
        answer: Deferred = Deferred()
        self.factory.chan.answer = answer
        event = resp("m-1", "ESME_ROK")
        self.assertIs(publish(self.factory, event), answer)
        self.assertEqual(self.factory.chan.published, [("messaging", RESP, event)])
        self.assertEqual(self.settlement.calls, [(RESP, "ESME_ROK", event.properties)])
        self.assertEqual(self.observer.done, 1)

    def test_wrapper_is_on_the_instance_only(self):
        """Jasmin's class keeps its own method; installing twice wraps once."""
        self.assertIsInstance(self.factory.publish, ObservingPublish)
        self.assertNotIsInstance(jasmin_factory().publish, ObservingPublish)
        self.assertNotIsInstance(AmqpFactory.publish, ObservingPublish)
        wrapper = self.factory.publish
        self.assertIs(install(self.factory, self.observer), wrapper)
        self.assertNotIsInstance(wrapper.publish, ObservingPublish)

    def test_delivery_receipts_only_with_dlr_refunds(self):
        """dlr.deliver_sm is settled when dlr_refund names stats, and left alone otherwise."""
        event = receipt("ABC", "UNDELIV")
        publish(self.factory, event, DLR)
        self.assertEqual(self.settlement.calls, [(DLR, event.body, event.properties)])
        settlement = FakeSettlement()
        factory = jasmin_factory()
        install(factory, OutcomeObserver(settlement, clock=self.clock))
        publish(factory, event, DLR)
        self.assertEqual((settlement.attempts, len(factory.chan.published)), (0, 1))
        self.assertEqual(OutcomeObserver(settlement, clock=self.clock).routing_keys, (RESP,))

    def test_other_routing_keys_and_exchanges_are_left_alone(self):
        """submit.sm.*, submit_sm_resp to a client, deliver.sm.*, billing: published, not
        settled."""
        content = SubmitSmContent(uid=UID, body=b"x", replyto="submit.sm.resp.smsc")
        for key in ("submit.sm.smsc", "submit.sm.resp.smsc", "deliver.sm.smsc",
                    "bill_request.submit_sm_resp.alice", "dlr.submit_sm_respx"):
            publish(self.factory, content, key)
        publish(self.factory, resp("m-1", "ESME_ROK"), exchange="billing")
        self.assertEqual(len(self.factory.chan.published), 6)
        self.assertEqual(self.settlement.attempts, 0)

    def test_not_connected_jasmin_still_answers_none_and_the_outcome_settles(self):
        """RabbitMQ down: Jasmin's publish logs and answers None as ever; the SMSC did answer,
        so the event is settled all the same."""
        self.factory.connected = False
        self.assertIsNone(publish(self.factory, resp("m-1", "ESME_ROK")))
        self.assertEqual(len(self.settlement.calls), 1)

    def test_jasmins_exception_passes_through(self):
        """An exception in Jasmin's publish reaches Jasmin's caller unchanged."""
        def broken(**kw):
            raise RuntimeError("jasmin")

        wrapper = ObservingPublish(broken, self.observer)
        with self.assertRaisesRegex(RuntimeError, "jasmin"):
            wrapper(exchange="messaging", routing_key=RESP, content=resp("m-1", "ESME_ROK"))
        self.assertEqual(len(self.settlement.calls), 1)

    def test_nothing_of_ours_reaches_jasmin(self):
        """A handler error, a broken observer, content without properties: Jasmin's result
        comes back, nothing raised, each counted as given up."""
        self.settlement.error = RuntimeError("bug")
        self.assertIsNotNone(publish(self.factory, resp("m-1", "ESME_ROK")))
        self.clock.pump([5.0] * 4)  # tried 5 times, 5 s apart: then given up
        self.assertEqual((self.settlement.attempts, self.observer.given_up), (5, 1))
        self.assertIsNotNone(publish(self.factory, object()))

        class Broken(OutcomeObserver):
            def published(self, routing_key, body, properties):
                raise RuntimeError("broken")

        factory = jasmin_factory()
        install(factory, Broken(self.settlement, clock=self.clock, metrics=self.metrics))
        self.assertIsNotNone(publish(factory, resp("m-2", "ESME_ROK")))
        self.assertEqual(self.metrics.outcomes_given_up.value(), 3)
        self.assertEqual(len(factory.chan.published), 1)

    def test_jasmin_never_waits_for_the_store(self):
        """Jasmin's publish has returned while the settlement call is still in flight."""
        answer: Deferred = Deferred()

        class Slow(FakeSettlement):
            async def submit_sm_resp(self, body, properties):
                self.calls.append((RESP, body, properties))
                return await answer

        slow = Slow()
        factory = jasmin_factory()
        observer = OutcomeObserver(slow, clock=self.clock)
        install(factory, observer)
        self.assertTrue(publish(factory, resp("m-1", "ESME_ROK")).called)
        self.assertEqual((len(slow.calls), observer.pending), (1, 1))
        answer.callback(Outcome.SETTLED)
        self.assertEqual((observer.pending, observer.done), (0, 1))

    def test_store_unavailable_retried_then_settled(self):
        """Redis away: Jasmin published at once; the event is retried with back-off."""
        self.settlement.failures = 3
        publish(self.factory, resp("m-1", "ESME_ROK"))
        self.assertEqual((self.settlement.attempts, self.observer.waiting), (1, 1))
        for delay in (0.5, 1.0, 2.0):  # doubling from initial_delay
            self.clock.advance(delay - 0.01)
            attempts = self.settlement.attempts
            self.clock.advance(0.01)
            self.assertEqual(self.settlement.attempts, attempts + 1)
        self.assertEqual(len(self.settlement.calls), 1)
        self.assertEqual((self.observer.pending, self.observer.waiting), (0, 0))
        self.assertEqual(self.metrics.outcome_retries.value(), 3)
        self.assertEqual(self.metrics.outcomes_given_up.value(), 0)
        self.assertEqual(self.metrics.link_retries.value(), 0)

    def test_store_unavailable_given_up_after_the_bound(self):
        """Redis never back: attempts stop after give_up_after seconds, counted, no raise."""
        self.settlement.failures = -1
        publish(self.factory, resp("m-1", "ESME_ROK"))
        self.clock.pump([1.0] * 120)
        self.assertEqual((self.observer.given_up, self.observer.pending), (1, 0))
        self.assertEqual(self.metrics.outcomes_given_up.value(), 1)
        self.assertEqual(self.settlement.attempts, 7)  # as for links: 61.5 s > 60 s

    def test_stop_tries_waiting_events_once_more(self):
        """At stop a waiting event is tried at once; one published after stop is tried once."""
        self.settlement.failures = 1
        publish(self.factory, resp("m-1", "ESME_ROK"))
        self.successResultOf(self.observer.stop())
        self.assertEqual(len(self.settlement.calls), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.settlement.failures = 1
        publish(self.factory, resp("m-2", "ESME_ROK"))
        self.assertEqual((self.observer.given_up, self.observer.waiting), (1, 0))


class RetryHelperTests(SynchronousTestCase):
    def test_linker_and_observer_share_one_retry_machinery(self):
        """Both are BackgroundRetry: the same bounds, counters and stop()."""
        from jasmin_credits.retrying import BackgroundRetry

        self.assertTrue(issubclass(QueueingLinker, BackgroundRetry))
        self.assertTrue(issubclass(OutcomeObserver, BackgroundRetry))
        with self.assertRaises(ValueError):
            OutcomeObserver(FakeSettlement(), clock=Clock(), initial_delay=0)


class ExactlyOnceTests(TestCase):
    async def settle(self, observer: OutcomeObserver) -> None:
        await observer.stop()  # every event in flight has been written

    async def test_commit_once_even_if_a_consumer_sees_it_too(self):
        """Linked at queueing, ESME_ROK through Jasmin's publish: charged once, and a consumer
        still reading the event (a settled on events) charges nothing more."""
        store = await funded(self)
        ref = await hold(store)
        message = pdu()
        tag_pdu(message, UID, ref, 1)
        linker = QueueingLinker(store, clock=Clock())
        linker.submitted("m-1", message)
        settlement = Settlement(store)
        observer = OutcomeObserver(settlement, clock=Clock())
        factory = jasmin_factory()
        install(factory, observer)
        event = resp("m-1", "ESME_ROK")
        publish(factory, event)
        await linker.stop()
        await self.settle(observer)
        await settlement.submit_sm_resp(event.body.encode(), event.properties)
        self.assertEqual(await money(store), (1000 - 10, 0))
        [charge] = await charges(store)
        self.assertEqual(charge.fields["msgid"], "m-1")

    async def test_error_refunds_and_receipt_refunds(self):
        """A final error response releases the hold; with dlr_refund an UNDELIV receipt
        refunds a charged message, both through Jasmin's publish."""
        store = await funded(self)
        settlement = Settlement(store, dlr_refund_stats={"UNDELIV"})
        observer = OutcomeObserver(settlement, clock=Clock())
        factory = jasmin_factory()
        install(factory, observer)
        failed, sent = await hold(store), await hold(store)
        await store.link(UID, failed, "m-err", 1)
        await store.link(UID, sent, "m-ok", 1)
        publish(factory, resp("m-err", "ESME_RINVDSTADR"))
        ok = resp("m-ok", "ESME_ROK")
        publish(factory, ok)
        await self.settle(observer)
        self.assertEqual(await money(store), (1000 - 10, 0))
        observer = OutcomeObserver(settlement, clock=Clock())
        factory = jasmin_factory()
        install(factory, observer)
        publish(factory, receipt(smpp_id_of(ok), "UNDELIV"), DLR)
        await self.settle(observer)
        self.assertEqual(await money(store), (1000, 0))


class RuntimeTests(TestCase):
    async def runtime(self, **settlement):
        return await unstarted_runtime(self, **settlement)

    async def test_queueing_wraps_the_broker_and_stops_with_the_runtime(self):
        """link: queueing installs the observer on jasmind's AmqpFactory; the runtime stops
        it; receipts are watched only with dlr_refund."""
        runtime = await self.runtime()
        factory = jasmin_factory()
        observer = runtime.install_amqp_broker(factory)
        self.assertIsInstance(observer, OutcomeObserver)
        self.assertIs(factory.publish.observer, observer)
        self.assertEqual(observer.routing_keys, (RESP,))
        self.assertEqual(observer.give_up_after, 6 * 3600)  # the store's pending_outcome_ttl
        self.assertIs(observer.settlement.metrics, runtime.metrics)
        self.assertEqual(runtime.services, [observer])
        await runtime.stop()
        self.assertTrue(observer._stopping)
        runtime = await self.runtime(dlr_refund=["UNDELIV"])
        self.assertEqual(runtime.install_amqp_broker(jasmin_factory()).routing_keys,
                         (RESP, DLR))

    async def test_events_or_disabled_leave_jasmin_alone(self):
        """link: events, or settlement disabled: publish stays Jasmin's own."""
        for settlement in ({"link": "events"}, {"enabled": False}):
            runtime = await self.runtime(**settlement)
            factory = jasmin_factory()
            self.assertIsNone(runtime.install_amqp_broker(factory))
            self.assertNotIsInstance(factory.publish, ObservingPublish)
