"""Settlement from Jasmin's AMQP events: handlers against real Redis, the consumer against a
real RabbitMQ, with messages built by Jasmin's own content classes."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace

import pytest
from jasmin.managers.content import DLR, SubmitSmContent
from smpp.pdu.operations import SubmitSM
from smpp.pdu.pdu_types import CommandId, CommandStatus
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from txamqp.client import ChannelClosed

from jasmin_credits.amqp import AmqpConnection, declare_bound_queue, declare_exchange
from jasmin_credits.devservices import free_port
from jasmin_credits.errors import StoreUnavailable
from jasmin_credits.metrics import CreditMetrics
from jasmin_credits.settlement import (
    ALL_EVENTS,
    DELIVER_SM,
    PDU_ATTRIBUTE,
    SUBMIT_SM,
    SUBMIT_SM_RESP,
    Outcome,
    QueueNames,
    Settlement,
    SettlementConsumer,
    declare_queues,
    events_consumed,
    load_submit_sm,
    read_tag,
    tag_pdu,
)

from .polling import eventually
from .rabbitmq_support import rabbitmq, rabbitmq_server  # noqa: F401 - pytest fixtures
from .redis_support import make_store

UID = "alice"
PRICE = 10
OUTCOMES = frozenset({SUBMIT_SM_RESP, DELIVER_SM})
"""A consumer that links nothing from events (the gateway linked)."""


def test_events_consumed_follow_the_config():
    """events: links and outcomes, receipts only when one refunds; queueing: nothing."""
    assert events_consumed("events", ["UNDELIV"]) == ALL_EVENTS
    assert events_consumed("events", []) == {SUBMIT_SM, SUBMIT_SM_RESP}
    assert events_consumed("queueing", ["UNDELIV"]) == frozenset()


# -- messages exactly as Jasmin builds them -----------------------------------------------------

def wire(content) -> tuple[bytes, dict]:
    """Body and properties as a consumer receives them (the body arrives as bytes)."""
    body = content.body if isinstance(content.body, bytes) else content.body.encode()
    return body, dict(content.properties)


def submit_sm(uid: str | None, ref: str | None, parts: int = 1, chain: int = 1,
              msgid: str | None = None, protocol: int = 2) -> SubmitSmContent:
    """A ``submit.sm.<cid>`` message; the first PDU of the chain carries our tag."""
    pdus = [SubmitSM(seqNum=i + 1, source_addr=b"JC", destination_addr=b"33612345678",
                     short_message=b"part %d" % i) for i in range(chain)]
    for first, nxt in zip(pdus, pdus[1:], strict=False):
        first.nextPdu = nxt
    if uid is not None:
        tag_pdu(pdus[0], uid, ref, parts)
    return SubmitSmContent(uid=uid or "nobody", body=pickle.dumps(pdus[0], protocol),
                           replyto="submit.sm.resp.smsc", msgid=msgid,
                           source_connector="smppsapi", destination_cid="smsc")


def resp(msgid: str, status: str, smpp_msgid: bytes | None = None) -> DLR:
    """A ``dlr.submit_sm_resp`` event."""
    if status == "ESME_ROK" and smpp_msgid is None:
        smpp_msgid = b"0" + msgid[-8:].encode()
    return DLR(pdu_type=CommandId.submit_sm_resp, msgid=msgid,
               status=CommandStatus[status], smpp_msgid=smpp_msgid)


def receipt(smpp_msgid: str, stat: str) -> DLR:
    """A ``dlr.deliver_sm`` event (message-id = upstream id as Jasmin codes it)."""
    return DLR(pdu_type=CommandId.deliver_sm, msgid=smpp_msgid, status=stat.encode(),
               cid="smsc", dlr_details={"id": smpp_msgid.encode(), "sub": b"001",
                                        "dlvrd": b"001", "stat": stat.encode(),
                                        "err": b"000", "text": b""})


def smpp_id_of(event: DLR) -> str:
    return event.properties["headers"]["smpp_msgid"]


async def funded(test, amount: int = 1000):
    store = await make_store(test)
    await store.top_up(UID, amount, op_id="fund", actor="test")
    return store


async def hold(store, parts: int = 1) -> str:
    held = await store.reserve(UID, PRICE, parts)
    assert held.ok, held
    return held.ref


async def money(store) -> tuple[int, int]:
    wallet = await store.wallet(UID)
    return wallet.balance, wallet.reserved


async def charges(store) -> list:
    entries, _ = await store.log(UID, count=1000)
    return [e for e in entries if e.type == "charge"]


# -- tags -----------------------------------------------------------------------------------------

class TagTests(TestCase):
    def test_tag_round_trips_through_jasmins_pickle(self):
        """A tag set on the PDU survives Jasmin's pickling into the queue body."""
        content = submit_sm(UID, "1795000000000-abcdef012345", parts=2, chain=2)
        pdu = pickle.loads(content.body)
        self.assertEqual(getattr(pdu, PDU_ATTRIBUTE)["parts"], 2)
        self.assertEqual(read_tag(pdu), {"uid": UID, "ref": "1795000000000-abcdef012345",
                                         "parts": 2})

    def test_jasmin_factory_chain_loads(self):
        """A long SubmitSM built by Jasmin's SMPPOperationFactory loads under pickle 2 and 5."""
        from jasmin.protocols.smpp.configs import SMPPClientConfig
        from jasmin.protocols.smpp.operations import SMPPOperationFactory
        from smpp.pdu.pdu_types import RegisteredDelivery, RegisteredDeliveryReceipt

        factory = SMPPOperationFactory(SMPPClientConfig(id="smsc01"), long_content_max_parts=5,
                                       long_content_split="udh")
        pdu = factory.SubmitSM(
            source_addr=b"JC", destination_addr=b"33612345678", short_message=b"x" * 400,
            registered_delivery=RegisteredDelivery(
                RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED))
        tag_pdu(pdu, UID, "1795000000000-abcdef012345", 3)
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            loaded = load_submit_sm(pickle.dumps(pdu, protocol))
            self.assertEqual(read_tag(loaded)["parts"], 3)
            self.assertTrue(hasattr(loaded.nextPdu, "nextPdu"))

    def test_untagged_pdu_reads_none(self):
        """A PDU without our attribute has no tag."""
        self.assertIsNone(read_tag(SubmitSM(seqNum=1)))

    def test_bad_tag_is_refused(self):
        """A tag with a bad part count or ref is an error, not a silent link."""
        pdu = SubmitSM(seqNum=1)
        tag_pdu(pdu, UID, "1795000000000-abc", 0)
        self.assertRaises(ValueError, read_tag, pdu)
        tag_pdu(pdu, UID, "not-a-ref", 1)
        self.assertRaises(ValueError, read_tag, pdu)


# -- handlers against real Redis -----------------------------------------------------------------

class HandlerTests(TestCase):
    async def test_link_then_ok_charges_once(self):
        """submit.sm then ESME_ROK charges the held parts exactly once."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        self.assertEqual(await settlement.submit_sm(*wire(message)), Outcome.SETTLED)
        self.assertEqual(await money(store), (1000, PRICE))
        self.assertEqual(await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_ROK"))),
                         Outcome.SETTLED)
        self.assertEqual(await money(store), (1000 - PRICE, 0))
        self.assertEqual(len(await charges(store)), 1)

    async def test_resp_before_link_charges_at_link(self):
        """An ESME_ROK that overtakes its submit.sm is applied when the link arrives."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_ROK")))
        self.assertEqual(await money(store), (1000, PRICE))
        await settlement.submit_sm(*wire(message))
        self.assertEqual(await money(store), (1000 - PRICE, 0))

    async def test_error_resp_refunds(self):
        """A final error response gives the held credits back and closes the reservation."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        await settlement.submit_sm(*wire(message))
        await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_RINVDSTADR")))
        self.assertEqual(await money(store), (1000, 0))
        self.assertEqual(await store.users_with_open_reservations(), [])
        self.assertEqual(await charges(store), [])

    async def test_retried_error_is_not_settled(self):
        """An error Jasmin retries leaves the message open; a later ESME_ROK charges it."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        await settlement.submit_sm(*wire(message))
        outcome = await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_RTHROTTLED")))
        self.assertEqual(outcome, Outcome.WAITING)
        self.assertEqual(await money(store), (1000, PRICE))
        await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_ROK")))
        self.assertEqual(await money(store), (1000 - PRICE, 0))

    async def test_retried_error_refunds_under_refund_policy(self):
        """unknown_outcome_policy='refund' refunds a retriable error at once."""
        store = await funded(self)
        settlement = Settlement(store, unknown_outcome_policy="refund")
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        await settlement.submit_sm(*wire(message))
        await settlement.submit_sm_resp(*wire(resp(msgid, "ESME_RSYSERR")))
        self.assertEqual(await money(store), (1000, 0))

    async def test_dlr_undeliv_refunds_when_enabled(self):
        """With UNDELIV in dlr_refund_stats a failed receipt refunds the charged message."""
        store = await funded(self)
        settlement = Settlement(store, dlr_refund_stats={"UNDELIV", "REJECTD", "EXPIRED"})
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        ok = resp(msgid, "ESME_ROK")
        await settlement.submit_sm(*wire(message))
        await settlement.submit_sm_resp(*wire(ok))
        self.assertEqual(await money(store), (1000 - PRICE, 0))
        outcome = await settlement.deliver_sm(*wire(receipt(smpp_id_of(ok), "UNDELIV")))
        self.assertEqual(outcome, Outcome.SETTLED)
        self.assertEqual(await money(store), (1000, 0))
        entries, _ = await store.log(UID, count=100)
        self.assertEqual([e.fields["reason"] for e in entries if e.type == "refund"],
                         ["DLR UNDELIV"])

    async def test_dlr_undeliv_does_nothing_when_disabled(self):
        """By default a failed receipt changes nothing and writes no id mapping."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        ok = resp(msgid, "ESME_ROK")
        await settlement.submit_sm(*wire(message))
        await settlement.submit_sm_resp(*wire(ok))
        outcome = await settlement.deliver_sm(*wire(receipt(smpp_id_of(ok), "UNDELIV")))
        self.assertEqual(outcome, Outcome.IGNORED)
        self.assertEqual(await money(store), (1000 - PRICE, 0))
        self.assertIsNone(await store.redis.get(settlement.smsc_key(smpp_id_of(ok))))

    async def test_delivered_receipt_changes_nothing(self):
        """A DELIVRD receipt leaves the charge in place even with DLR refunds on."""
        store = await funded(self)
        settlement = Settlement(store, dlr_refund_stats={"UNDELIV"})
        ref = await hold(store)
        message = submit_sm(UID, ref)
        ok = resp(message.properties["message-id"], "ESME_ROK")
        await settlement.submit_sm(*wire(message))
        await settlement.submit_sm_resp(*wire(ok))
        await settlement.deliver_sm(*wire(receipt(smpp_id_of(ok), "DELIVRD")))
        self.assertEqual(await money(store), (1000 - PRICE, 0))

    async def test_receipt_before_resp_is_applied_by_the_resp(self):
        """A refunding receipt that overtakes the response is parked and then applied."""
        store = await funded(self)
        settlement = Settlement(store, dlr_refund_stats={"UNDELIV"})
        ref = await hold(store)
        message = submit_sm(UID, ref)
        ok = resp(message.properties["message-id"], "ESME_ROK")
        await settlement.submit_sm(*wire(message))
        self.assertEqual(await settlement.deliver_sm(*wire(receipt(smpp_id_of(ok), "UNDELIV"))),
                         Outcome.IGNORED)
        await settlement.submit_sm_resp(*wire(ok))
        self.assertEqual(await money(store), (1000, 0))

    async def test_duplicate_events_settle_once(self):
        """Every event delivered twice (redelivery, two consumers) moves money once."""
        store = await funded(self)
        settlement = Settlement(store, dlr_refund_stats={"UNDELIV"})
        first, second = await hold(store), await hold(store)
        m1, m2 = submit_sm(UID, first), submit_sm(UID, second)
        ok1 = resp(m1.properties["message-id"], "ESME_ROK")
        ok2 = resp(m2.properties["message-id"], "ESME_ROK")
        for _ in range(2):
            await settlement.submit_sm(*wire(m1))
            await settlement.submit_sm(*wire(m2))
            await settlement.submit_sm_resp(*wire(ok1))
            await settlement.submit_sm_resp(*wire(ok2))
        for _ in range(2):
            await settlement.deliver_sm(*wire(receipt(smpp_id_of(ok2), "UNDELIV")))
        self.assertEqual(await money(store), (1000 - PRICE, 0))
        self.assertEqual(len(await charges(store)), 2)
        entries, _ = await store.log(UID, count=100)
        self.assertEqual(len([e for e in entries if e.type == "refund"]), 1)

    async def test_http_chain_links_all_parts(self):
        """An HTTP /send chain tagged with its length links and charges every part."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store, parts=3)
        message = submit_sm(UID, ref, parts=3, chain=3, protocol=pickle.HIGHEST_PROTOCOL)
        await settlement.submit_sm(*wire(message))
        await settlement.submit_sm_resp(*wire(resp(message.properties["message-id"],
                                                    "ESME_ROK")))
        self.assertEqual(await money(store), (1000 - 3 * PRICE, 0))

    async def test_untagged_message_is_ignored(self):
        """A message of a user without a wallet is not ours: nothing is written."""
        store = await funded(self)
        settlement = Settlement(store)
        outcome = await settlement.submit_sm(*wire(submit_sm(None, None)))
        self.assertEqual(outcome, Outcome.IGNORED)

    async def test_malformed_messages_are_dropped_without_raising(self):
        """Garbage bodies, foreign pickles, missing ids and odd statuses answer MALFORMED."""
        store = await funded(self)
        settlement = Settlement(store, dlr_refund_stats={"UNDELIV"})
        props = {"message-id": "m-1", "headers": {}}

        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))

        cases = [
            settlement.submit_sm(b"\x80not a pickle", props),
            settlement.submit_sm(pickle.dumps({"a": 1}), props),
            settlement.submit_sm(pickle.dumps(Evil()), props),
            settlement.submit_sm(pickle.dumps(SubmitSM(seqNum=1)), {}),
            settlement.submit_sm_resp(b"", props),
            settlement.submit_sm_resp(b"ESME_ROK", {"headers": {}}),
            settlement.submit_sm_resp(b"\x00\xffjunk", props),
            settlement.deliver_sm(b"UNDELIV", {}),
        ]
        for case in cases:
            self.assertEqual(await case, Outcome.MALFORMED)
        bad_tag = SubmitSM(seqNum=1)
        tag_pdu(bad_tag, "bad uid", "1795000000000-abc", 1)
        self.assertEqual(await settlement.submit_sm(pickle.dumps(bad_tag), props),
                         Outcome.MALFORMED)

    async def test_store_error_is_not_taken_for_a_malformed_event(self):
        """A ValueError from the store (an unexpected reply), after the event was read, is
        raised to the consumer, which retries it; only errors reading the event drop it."""
        store = await funded(self)

        class OddReplies:
            def __getattr__(self, name):
                return getattr(store, name)

            async def link(self, *args, **kwargs):
                raise ValueError("too many values to unpack (expected 5)")

        settlement = Settlement(OddReplies())
        with self.assertRaises(ValueError):
            await settlement.submit_sm(*wire(submit_sm(UID, await hold(store))))
        self.assertEqual(await settlement.submit_sm(b"\x80not a pickle", {"message-id": "m"}),
                         Outcome.MALFORMED)

    async def test_handle_routes_by_routing_key(self):
        """handle() sends submit.sm.<cid> and dlr.* to their handlers, ignores the rest."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        self.assertEqual(await settlement.handle("submit.sm.smsc", *wire(message)),
                         Outcome.SETTLED)
        self.assertEqual(await settlement.handle("submit.sm.resp.smsc", b"x", {}),
                         Outcome.IGNORED)
        await settlement.handle("dlr.submit_sm_resp", *wire(resp(msgid, "ESME_ROK")))
        self.assertEqual(await money(store), (1000 - PRICE, 0))

    async def test_store_unavailable_propagates(self):
        """When Redis is gone the handler raises StoreUnavailable, so the event is retried."""
        store = await funded(self)
        settlement = Settlement(store)
        ref = await hold(store)
        store.redis.disconnect()
        with self.assertRaises(StoreUnavailable):
            await settlement.submit_sm(*wire(submit_sm(UID, ref)))


# -- the consumer against real RabbitMQ ------------------------------------------------------------

class FlakyStore:
    """Wraps a store; its first ``failures`` settle_message calls raise StoreUnavailable."""

    def __init__(self, store, failures: int):
        self._store, self.failures = store, failures

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def settle_message(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("injected")
        return await self._store.settle_message(*args, **kwargs)


class BuggyStore(FlakyStore):
    """Its first ``failures`` settle_message calls raise an unexpected error (a bug, or a
    Redis failure that does not look like one)."""

    async def settle_message(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("injected bug")
        return await self._store.settle_message(*args, **kwargs)


@pytest.mark.usefixtures("rabbitmq")
class ConsumerTests(TestCase):
    timeout = 180

    async def publisher(self) -> AmqpConnection:
        conn = AmqpConnection(self.amqp_settings, lambda client, channel: declare_exchange(channel))
        conn.start()
        self.addCleanup(conn.stop)
        await conn.when_ready()
        return conn

    async def publish(self, conn: AmqpConnection, routing_key: str, content) -> None:
        channel = await conn.when_ready()
        await channel.basic_publish(exchange="messaging", routing_key=routing_key,
                                    content=content)

    def queue_names(self, letter: str) -> QueueNames:
        """Queue names of this test alone, deleted when it ends."""
        names = QueueNames.with_prefix(f"jasmin_credits.{letter}{id(self):x}")
        self.addCleanup(lambda: Deferred.fromCoroutine(self.delete_queues(names)))
        return names

    async def consumer(self, settlement, names: QueueNames | None = None,
                       **kwargs) -> SettlementConsumer:
        """A started consumer on ``names`` (default: the test's own), stopped at the end."""
        consumer = SettlementConsumer(settlement, self.amqp_settings,
                                      queues=names or self.queue_names("t"), **kwargs)
        self.addCleanup(consumer.stop)
        await consumer.start()
        return consumer

    async def delete_queues(self, names: QueueNames) -> None:
        conn = AmqpConnection(self.amqp_settings, lambda client, channel: None)
        conn.start()
        try:
            channel = await conn.when_ready()
            for queue in (names.submit_sm, names.submit_sm_resp, names.deliver_sm):
                await channel.queue_delete(queue=queue)
        finally:
            await conn.stop()

    async def send(self, conn, store, ref: str, status: str = "ESME_ROK") -> str:
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        await self.publish(conn, "submit.sm.smsc", message)
        await self.publish(conn, "dlr.submit_sm_resp", resp(msgid, status))
        return msgid

    def settled_to(self, store, expected):
        async def check():
            return await money(store) == expected
        return check

    async def test_queues_declared_at_start_keep_events_until_a_consumer_comes(self):
        """declare_queues (run by a gateway at start) makes our queues catch Jasmin's
        events before any settlement consumer runs."""
        names = self.queue_names("d")
        self.assertTrue(await declare_queues(self.amqp_settings, names))
        conn = await self.publisher()
        await self.publish(conn, "submit.sm.smsc", submit_sm(UID, "1-a"))
        await self.publish(conn, "dlr.submit_sm_resp", resp("m-1", "ESME_ROK"))
        channel = await conn.when_ready()
        for queue in (names.submit_sm, names.submit_sm_resp):
            async def one_waiting(queue=queue):
                reply = await channel.queue_declare(queue=queue, passive=True)
                return reply.message_count == 1
            await eventually(one_waiting, what=f"one message waiting in {queue}")

    async def message_count(self, queue: str) -> int | None:
        """Messages waiting in ``queue``, or None if there is no such queue."""
        conn = AmqpConnection(self.amqp_settings, lambda client, channel: None)
        conn.start()
        try:
            channel = await conn.when_ready()
            try:
                reply = await channel.queue_declare(queue=queue, passive=True)
            except ChannelClosed:
                return None
            return reply.message_count
        finally:
            await conn.stop()

    async def test_no_submit_sm_queue_when_links_come_from_elsewhere(self):
        """Without submit_sm in ``events``: no submit_sm queue at start nor in the consumer,
        and responses still settle what the gateway linked."""
        names = self.queue_names("q")
        self.assertTrue(await declare_queues(self.amqp_settings, names, events=OUTCOMES))
        store = await funded(self)
        consumer = await self.consumer(Settlement(store), names, events=OUTCOMES)
        conn = await self.publisher()
        ref = await hold(store)
        message = submit_sm(UID, ref)
        msgid = message.properties["message-id"]
        await store.link(UID, ref, msgid, 1)  # what the gateway's linker does
        await self.send_published(conn, message, msgid)
        await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="charge")
        self.assertIsNone(await self.message_count(names.submit_sm))
        self.assertNotIn(Outcome.IGNORED, consumer.handled)

    async def test_no_receipt_queue_without_dlr_refund(self):
        """dlr_refund empty (the default): no deliver_sm queue, so no copy of every receipt
        is queued for nothing; links and responses still settle."""
        names = self.queue_names("r")
        events = events_consumed("events", [])
        self.assertTrue(await declare_queues(self.amqp_settings, names, events=events))
        store = await funded(self)
        await self.consumer(Settlement(store), names, events=events)
        conn = await self.publisher()
        message = submit_sm(UID, await hold(store))
        await self.send_published(conn, message, message.properties["message-id"])
        await self.publish(conn, "dlr.deliver_sm", receipt("ABC", "DELIVRD"))
        await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="charge")
        self.assertIsNone(await self.message_count(names.deliver_sm))
        self.assertEqual(await self.message_count(names.submit_sm_resp), 0)

    async def send_published(self, conn, message, msgid: str) -> None:
        await self.publish(conn, "submit.sm.smsc", message)
        await self.publish(conn, "dlr.submit_sm_resp", resp(msgid, "ESME_ROK"))

    async def test_switch_to_queueing_unbinds_and_drains_the_old_queue(self):
        """A submit_sm queue left by settlement.link: events is unbound, and the events it
        still holds are linked (none lost in the switch); new ones no longer reach it."""
        names = self.queue_names("s")
        self.assertTrue(await declare_queues(self.amqp_settings, names))  # events
        store = await funded(self)
        conn = await self.publisher()
        ref = await hold(store)
        left = submit_sm(UID, ref)
        await self.publish(conn, "submit.sm.smsc", left)

        async def one_left():
            return await self.message_count(names.submit_sm) == 1
        await eventually(one_left, what="the event waiting in the old queue")
        self.assertTrue(await declare_queues(self.amqp_settings, names,
                                             events=OUTCOMES))  # a gateway restarts
        consumer = await self.consumer(Settlement(store), names, events=OUTCOMES)
        await self.publish(conn, "dlr.submit_sm_resp",
                           resp(left.properties["message-id"], "ESME_ROK"))
        await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="leftover charged")
        self.assertEqual(consumer.handled.get(Outcome.SETTLED), 2)  # its link, its resp
        await self.publish(conn, "submit.sm.smsc", submit_sm(UID, await hold(store)))
        await self.publish(conn, "dlr.submit_sm_resp", resp("m-unknown", "ESME_ROK"))
        await eventually(lambda: _true(consumer.handled.get(Outcome.SETTLED) == 3),
                         what="the later resp handled")
        self.assertEqual(await self.message_count(names.submit_sm), 0)
        self.assertEqual(consumer.handled.get(Outcome.SETTLED), 3)  # no later submit.sm

    async def test_outcomes_in_process_unbind_and_drain_every_queue(self):
        """settlement.link: queueing settles nothing from RabbitMQ: nothing is declared, the
        queues settlement.link: events left are unbound, the events they hold settle (none
        lost in the switch), and later events no longer reach them."""
        names = self.queue_names("o")
        self.assertTrue(await declare_queues(self.amqp_settings, names))  # events
        store = await funded(self)
        conn = await self.publisher()
        left = submit_sm(UID, await hold(store))
        msgid = left.properties["message-id"]
        await self.send_published(conn, left, msgid)

        async def waiting():
            return [await self.message_count(q) for q in (names.submit_sm,
                                                          names.submit_sm_resp)] == [1, 1]
        await eventually(waiting, what="the events waiting in the old queues")
        nowhere = replace(self.amqp_settings, port=free_port(), connect_timeout=1.0)
        self.assertTrue(await declare_queues(nowhere, names,
                                             events=frozenset()))  # never connects
        consumer = await self.consumer(Settlement(store), names, events=frozenset())
        await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="leftover charged")
        probe = f"{names.submit_sm}.probe"
        channel = await conn.when_ready()
        await declare_bound_queue(channel, probe, ("dlr.submit_sm_resp", "dlr.deliver_sm"))
        self.addCleanup(lambda: channel.queue_delete(queue=probe))
        await self.publish(conn, "dlr.submit_sm_resp", resp("m-later", "ESME_ROK"))
        await self.publish(conn, "dlr.deliver_sm", receipt("ABC", "UNDELIV"))

        async def routed():
            return await self.message_count(probe) == 2
        await eventually(routed, what="later events routed")
        for queue in (names.submit_sm, names.submit_sm_resp, names.deliver_sm):
            self.assertEqual(await self.message_count(queue), 0, queue)
        self.assertEqual(consumer.handled, {Outcome.SETTLED: 2})  # the link and its resp

    async def test_declare_queues_gives_up_without_a_broker(self):
        """No broker: declare_queues answers False within its timeout instead of hanging."""
        settings = replace(self.amqp_settings, port=free_port(), connect_timeout=1.0)
        self.assertFalse(await declare_queues(settings, QueueNames.with_prefix("jc.none")))

    async def test_jasmin_events_settle_the_wallet(self):
        """submit.sm and dlr.submit_sm_resp published as Jasmin does charge through the
        consumer, and a malformed message in between is acked without stopping it."""
        store = await funded(self)
        consumer = await self.consumer(Settlement(store))
        conn = await self.publisher()
        ref = await hold(store)
        await self.publish(conn, "submit.sm.smsc", SubmitSmContent(
            uid=UID, body=b"garbage", replyto="submit.sm.resp.smsc", source_connector="httpapi"))
        await self.send(conn, store, ref)
        await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="charge")
        await eventually(lambda: _true(consumer.handled.get(Outcome.MALFORMED) == 1),
                         what="malformed message acked")
        self.assertEqual(len(await charges(store)), 1)

    async def test_jasmin_style_exchange_declaration_is_compatible(self):
        """Jasmin's own exchange_declare(messaging, topic) succeeds after ours."""
        store = await funded(self)
        await self.consumer(Settlement(store))
        conn = await self.publisher()
        channel = await conn.when_ready()
        await channel.exchange_declare(exchange="messaging", type="topic")
        await self.publish(conn, "dlr.submit_sm_resp", resp("unknown-id", "ESME_RINVDSTADR"))

    async def test_store_unavailable_requeues_until_it_settles(self):
        """A resp that meets an unavailable store is requeued after a delay and then settles."""
        store = await funded(self)
        flaky = FlakyStore(store, failures=2)
        consumer = await self.consumer(Settlement(flaky), requeue_delay=0.2)
        conn = await self.publisher()
        ref = await hold(store)
        await self.send(conn, store, ref)
        await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="charge after retry")
        self.assertEqual(consumer.handled.get("requeued"), 2)
        self.assertEqual(len(await charges(store)), 1)

    async def test_unexpected_error_is_retried_then_settles(self):
        """An event whose handler raises something unexpected is not lost: it is requeued
        like one that met an unavailable store, and settles once the fault has passed."""
        store = await funded(self)
        consumer = await self.consumer(Settlement(BuggyStore(store, failures=2)),
                                       requeue_delay=0.2)
        conn = await self.publisher()
        with self.assertLogs("jasmin-credits.settlement", "ERROR") as logged:
            await self.send(conn, store, await hold(store))
            await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="charged")
        self.assertIn("(attempt 1 of 5): requeued", logged.output[0])
        self.assertIn("RuntimeError: injected bug", logged.output[0])  # the traceback
        self.assertEqual((consumer.handled.get("retried"), consumer.handled.get("dropped")),
                         (2, None))
        self.assertEqual(len(await charges(store)), 1)

    async def test_event_failing_every_attempt_is_dropped_with_an_error(self):
        """One event that always fails does not hold a prefetch slot forever: after
        ``attempts`` it is acked, with an error naming it; the next events settle."""
        store = await funded(self)
        buggy = BuggyStore(store, failures=3)
        names = self.queue_names("x")
        metrics = CreditMetrics()
        consumer = await self.consumer(Settlement(buggy), names, requeue_delay=0.2, attempts=3,
                                       metrics=metrics)
        conn = await self.publisher()
        ref = await hold(store)
        with self.assertLogs("jasmin-credits.settlement", "ERROR") as logged:
            await self.send(conn, store, ref)
            await eventually(lambda: _true(consumer.handled.get("dropped") == 1),
                             what="dropped after 3 attempts")
        self.assertEqual(consumer.handled.get("retried"), 2)
        self.assertIn("after 3 attempts: dropped", logged.output[-1])
        # operators see it too: the SMSC's answer, retried twice, then dropped
        counted = metrics.settlement_events.values
        self.assertEqual((counted.get(("submit_sm_resp", "retried")),
                          counted.get(("submit_sm_resp", "dropped")),
                          counted.get(("submit_sm", "settled"))), (2, 1, 1))
        self.assertEqual((await store.wallet(UID)).reserved, PRICE)  # left to the sweeper
        await self.send(conn, store, await hold(store))  # the fault has passed
        await eventually(self.settled_to(store, (1000 - PRICE, PRICE)), what="next charged")
        for queue in (names.submit_sm, names.submit_sm_resp):
            self.assertEqual(await self.message_count(queue), 0, queue)

    async def test_consumer_survives_broker_restart(self):
        """After RabbitMQ restarts the consumer reconnects, rebinds and settles new events."""
        if not hasattr(self.rabbitmq, "process"):
            raise pytest.skip("external broker: cannot restart it")
        store = await funded(self)
        consumer = await self.consumer(Settlement(store))
        conn = await self.publisher()
        await self.send(conn, store, await hold(store))
        await eventually(self.settled_to(store, (1000 - PRICE, 0)), what="first charge")

        await deferToThread(self.rabbitmq.stop)
        await deferToThread(self.rabbitmq.start)

        await eventually(lambda: _true(consumer.connection.connections >= 2), timeout=60,
                         what="consumer reconnected")
        await eventually(lambda: _true(conn.connections >= 2), timeout=60,
                         what="publisher reconnected")
        await self.send(conn, store, await hold(store))
        await eventually(self.settled_to(store, (1000 - 2 * PRICE, 0)), what="second charge")
        self.assertEqual(len(await charges(store)), 2)


def _true(value) -> Deferred:
    d = Deferred()
    d.callback(bool(value))
    return d
