"""jasmind's AMQP consumers across a real RabbitMQ restart (:mod:`jasmin_credits.amqp_recovery`).

Jasmin's own ``AmqpFactory`` and ``RouterPB`` against a private broker that is stopped and
started. The connector's listener stands in for Jasmin's ``SMPPClientSMListener`` (which
would send to an SMSC) but acknowledges through Jasmin's own ``ackMessage``; the whole path,
with a real connector, jasmind and SMSC, is ``tests/faults/test_rabbitmq_restart.py``.
Without the recovery, the factory's reconnection fails with ``AlreadyCalledError`` and nothing
consumes again.
"""

from __future__ import annotations

import os
import pickle
import signal
from typing import Any

from jasmin.managers.content import DLR, SubmitSmContent
from jasmin.managers.listeners import SMPPClientSMListener
from jasmin.queues.factory import AmqpFactory
from jasmin.routing.configs import RouterPBConfig
from jasmin.routing.router import RouterPB
from smpp.pdu.pdu_types import CommandId, CommandStatus
from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from txamqp.client import Closed

from jasmin_credits.amqp import declare_bound_queue, declare_exchange
from jasmin_credits.amqp_recovery import AmqpRecovery, persistent
from jasmin_credits.devservices import RabbitMQServer

from .jasmin_objects import smpp_message
from .polling import eventually
from .rabbitmq_support import jasmind_factory, listen, private_broker, settings_for

CID = "smsc"
TAG = f"SMPPClientFactory-{CID}"


class Listener:
    """A connector's listener: takes the messages of ``submit.sm.<cid>`` one at a time, as
    ``SMPPClientSMListener`` does, and acknowledges them with its ``ackMessage`` unless told
    to keep them (a message waiting for the SMSC's answer)."""

    def __init__(self, factory: AmqpFactory):
        self.amqpBroker = factory
        self.submit_sm_q: Any = None
        self.received: DeferredQueue = DeferredQueue()
        self.keep = False

    def ackMessage(self, message: Any) -> Any:  # noqa: N802 - Jasmin's name
        # (looked up at each call: the recovery guards the class's method when installed)
        return SMPPClientSMListener.ackMessage(self, message)

    def setSubmitSmQ(self, queue: Any) -> None:  # noqa: N802 - Jasmin's name
        self.submit_sm_q = queue

    def submit_sm_callback(self, message: Any) -> None:
        self.submit_sm_q.get().addCallback(self.submit_sm_callback).addErrback(
            self.submit_sm_errback)
        if not self.keep:
            self.ackMessage(message)
        self.received.put(message)

    def submit_sm_errback(self, failure: Any) -> None:
        """The queue of a closed connection fails its waiting ``get`` (as in Jasmin)."""


class AmqpRecoveryTests(TestCase):
    timeout = 300

    async def _broker(self) -> RabbitMQServer:
        return await private_broker(self, "jc-recovery-rabbitmq-")

    async def _jasmind(self, server: RabbitMQServer, **settlement: Any,
                       ) -> tuple[AmqpFactory, AmqpRecovery, Listener]:
        """Jasmin's factory (reconnecting after 1 s), its router and one started and one
        stopped connector, as jasmind has them, with the recovery installed before the
        factory connects (as our launcher does)."""
        router_config = RouterPBConfig()
        router_config.log_file = str(server.rundir / "router.log")
        router = RouterPB(router_config, persistenceTimer=False)
        connectors = [{"id": CID, "consumer_tag": None, "submit_sm_q": None},
                      {"id": "idle", "consumer_tag": None, "submit_sm_q": None,
                       "sm_listener": None}]
        manager = type("Manager", (), {"connectors": connectors})()
        made = {}

        def install(factory: AmqpFactory) -> None:
            made["recovery"] = AmqpRecovery(factory, {"router-pb-factory": router,
                                                      "smppcm-pb-factory": manager},
                                            reactor, **settlement)
            made["recovery"].install()
            connectors[0]["sm_listener"] = Listener(factory)

        factory = await jasmind_factory(self, server, install)
        recovery, listener = made["recovery"], connectors[0]["sm_listener"]
        # jasmind's start: the router subscribes, connectors are added, one is started
        await router.addAmqpBroker(factory)
        await factory.chan.basic_qos(prefetch_count=1)
        connectors[0]["consumer_tag"] = TAG
        for connector in connectors:
            await recovery._connector(connector)
        return factory, recovery, listener

    def _publish(self, factory: AmqpFactory, msgid: str) -> None:
        factory.publish(exchange="messaging", routing_key=f"submit.sm.{CID}",
                        content=SubmitSmContent("alice", pickle.dumps(smpp_message(), 2),
                                                f"submit.sm.resp.{CID}", msgid=msgid))

    async def _restart(self, server: RabbitMQServer, recovery: AmqpRecovery,
                       factory: AmqpFactory) -> None:
        restored = recovery.restored
        await deferToThread(server.stop)
        await eventually(lambda: not factory.connected, what="jasmind's factory disconnected")
        await deferToThread(server.start)
        await eventually(lambda: recovery.restored > restored, timeout=60,
                         what="jasmind's queues restored")

    async def test_consumers_come_back_after_a_broker_restart(self):
        server = await self._broker()
        factory, recovery, listener = await self._jasmind(server)
        self._publish(factory, "before")
        first = await listener.received.get().addTimeout(30, reactor)
        self.assertEqual(first.content.properties["message-id"], "before")

        await self._restart(server, recovery, factory)

        consumers = await deferToThread(server.queue_consumers)
        self.assertEqual(consumers.get(f"submit.sm.{CID}"), 1)
        self.assertEqual(consumers.get("submit.sm.idle"), 0)  # declared, not consumed
        self.assertEqual(consumers.get("RouterPB_deliver_sm_all"), 1)
        self.assertEqual(consumers.get("RouterPB_bill_request_submit_sm_resp_all"), 1)
        bindings = await deferToThread(server.bindings)
        self.assertIn(("messaging", "submit.sm.idle", "submit.sm.idle"), bindings)
        # prefetch 1: the second message comes only once the first was acknowledged
        for msgid in ("after-1", "after-2", "after-3"):
            self._publish(factory, msgid)
        got = [(await listener.received.get().addTimeout(30, reactor))
               .content.properties["message-id"] for _ in range(3)]
        self.assertEqual(got, ["after-1", "after-2", "after-3"])

    async def test_a_delivery_from_before_the_restart_is_not_acknowledged_after_it(self):
        """Acknowledging it on the new channel would name a delivery tag that channel never
        gave: the broker would close jasmind's channel."""
        server = await self._broker()
        factory, recovery, listener = await self._jasmind(server)
        listener.keep = True  # waiting for an SMSC that answers after the restart
        self._publish(factory, "in-flight")
        in_flight = await listener.received.get().addTimeout(30, reactor)
        listener.keep = False  # (what comes next is acknowledged at once)

        await self._restart(server, recovery, factory)
        with self.assertLogs("jasmin-credits", "INFO") as logs:
            await listener.ackMessage(in_flight)
        self.assertIn("not acknowledging a message delivered before the reconnection",
                      logs.output[0])

        for msgid in ("after-1", "after-2"):
            self._publish(factory, msgid)
        got = [(await listener.received.get().addTimeout(30, reactor))
               for _ in range(3)]
        # The connector's queue is durable: the broker kept the unacknowledged message and
        # gives it again (at least once, as Jasmin requeues a message whose answer timed out)
        self.assertEqual([m.content.properties["message-id"] for m in got],
                         ["in-flight", "after-1", "after-2"])
        self.assertEqual([m.redelivered for m in got], [True, False, False])
        self.assertTrue(factory.connected)

    async def test_messages_queued_for_a_connector_survive_a_broker_restart(self):
        """Jasmin declares ``submit.sm.<cid>`` transient: a restart lost every message
        jasmind had accepted (``ESME_ROK``) and not yet sent. Declared durable, with the
        messages persistent, they are sent once the broker is back."""
        server = await self._broker()
        factory, recovery, listener = await self._jasmind(server)
        for msgid in ("queued-1", "queued-2"):  # (for the stopped connector: they wait)
            factory.publish(exchange="messaging", routing_key="submit.sm.idle",
                            content=SubmitSmContent("alice", pickle.dumps(smpp_message(), 2),
                                                    "submit.sm.resp.idle", msgid=msgid))
        await eventually(lambda: deferToThread(server.queue_messages).addCallback(
            lambda counts: counts.get("submit.sm.idle") == 2), what="both queued")
        self.assertIsNone(recovery.confirms)  # (publisher confirms are opt-in)

        await self._restart(server, recovery, factory)

        counts = await deferToThread(server.queue_messages)
        self.assertEqual(counts.get("submit.sm.idle"), 2)
        bindings = await deferToThread(server.bindings)
        self.assertIn(("messaging", "submit.sm.idle", "submit.sm.idle"), bindings)

    async def test_a_transient_connector_queue_from_before_stays_transient(self):
        """A queue Jasmin declared transient before (kept until the broker restarts):
        declaring it durable would make the broker close jasmind's only channel."""
        server = await self._broker()
        factory, recovery, listener = await self._jasmind(server)
        await factory.chan.queue_declare(queue="submit.sm.old")  # (as Jasmin alone did)
        with self.assertLogs("jasmin-credits", "WARNING") as logs:
            await factory.named_queue_declare(queue="submit.sm.old")
        self.assertIn("RabbitMQ queue submit.sm.old is transient", logs.output[0])
        self.assertIn("submit.sm.old", factory.queues)
        self._publish(factory, "still-connected")  # (jasmind's channel is still open)
        got = await listener.received.get().addTimeout(30, reactor)
        self.assertEqual(got.content.properties["message-id"], "still-connected")

    async def test_settlements_queues_are_bound_again_before_jasmind_publishes(self):
        """Jasmin's ``messaging`` is not durable: the restart took settlement's bindings.
        A message jasmind publishes as soon as it says it is connected again must reach
        settlement's queue (else it is sent and never charged)."""
        server = await self._broker()
        queue = "jc-recovery.submit_sm"
        factory, recovery, listener = await self._jasmind(
            server, event_queues=[(queue, ("submit.sm.*",))])
        await declare_bound_queue(factory.chan, queue, ["submit.sm.*"])  # (runtime's start)
        restored = recovery.restored
        await deferToThread(server.stop)
        await eventually(lambda: not factory.connected, what="jasmind's factory disconnected")
        await deferToThread(server.start)
        await eventually(lambda: factory.connected, timeout=60, interval=0.01,
                         what="jasmind connected again")
        self.assertEqual(recovery.restored, restored + 1)  # (connected once restored only)
        self._publish(factory, "first-after")
        await eventually(lambda: deferToThread(server.queue_messages).addCallback(
            lambda counts: counts.get(queue) == 1), what="the message in settlement's queue")
        bindings = await deferToThread(server.bindings)
        self.assertIn(("messaging", queue, "submit.sm.*"), bindings)

    async def test_without_a_runtime_only_existing_settlement_queues_are_bound(self):
        """Our launcher without a credits config (beside the drop-in interceptord) binds
        settlement's queues again where they exist, and creates none."""
        server = await self._broker()
        there, missing = "jc-there.submit_sm", "jc-missing.submit_sm"
        factory, recovery, listener = await self._jasmind(
            server, event_queues=[(missing, ("submit.sm.*",)), (there, ("submit.sm.*",))],
            existing_only=True)
        await declare_bound_queue(factory.chan, there, ["submit.sm.*"])

        await self._restart(server, recovery, factory)

        bindings = await deferToThread(server.bindings)
        self.assertIn(("messaging", there, "submit.sm.*"), bindings)
        counts = await deferToThread(server.queue_messages)
        self.assertIn(there, counts)
        self.assertNotIn(missing, counts)
        consumers = await deferToThread(server.queue_consumers)
        self.assertEqual(consumers.get(f"submit.sm.{CID}"), 1)  # the rest restored too

    async def test_a_failed_restoration_never_lets_jasmind_publish(self):
        """Settlement's queue cannot be declared (the broker refuses: a queue of that name
        with other arguments): jasmind stays "not connected" (its clients are refused, no
        message is sent uncharged), closes the connection and tries again until it works."""
        server = await self._broker()
        queue = "jc-conflict.submit_sm"
        factory, recovery, listener = await self._jasmind(
            server, event_queues=[(queue, ("submit.sm.*",))])
        await factory.chan.queue_declare(queue=queue, durable=True,
                                         arguments={"x-max-length": 5})  # (survives)
        await deferToThread(server.stop)
        await eventually(lambda: not factory.connected, what="jasmind's factory disconnected")
        with self.assertLogs("jasmin-credits", "ERROR") as logs:
            await deferToThread(server.start)
            await eventually(lambda: len(logs.output) >= 2, timeout=60,
                             what="two restorations failed")
        self.assertIn("restoring Jasmin's AMQP queues failed", logs.output[0])
        self.assertFalse(factory.connected)
        self.assertEqual(recovery.restored, 0)

        await deferToThread(server.delete_queue, queue)
        await eventually(lambda: factory.connected, timeout=60, what="restored at last")
        self.assertEqual(recovery.restored, 1)
        bindings = await deferToThread(server.bindings)
        self.assertIn(("messaging", queue, "submit.sm.*"), bindings)

    async def test_settlements_events_survive_a_broker_restart(self):
        """Two SMSC answers: one published before the broker stops and not yet read by
        settlement (Jasmin publishes it transient: the restart would drop it), one for a
        message jasmind had in hand when the broker went away (Jasmin alone drops it). Either
        lost leaves its message settled by policy (refunded) instead of charged."""
        server = await self._broker()
        queue = "jc-kept.submit_sm_resp"
        factory, recovery, listener = await self._jasmind(
            server, event_queues=[(queue, ("dlr.submit_sm_resp",))])
        await declare_bound_queue(factory.chan, queue, ["dlr.submit_sm_resp"])

        def answer(msgid: str) -> DLR:
            return DLR(pdu_type=CommandId.submit_sm_resp, msgid=msgid,
                       status=CommandStatus.ESME_ROK, smpp_msgid=b"smsc-" + msgid.encode())

        await factory.publish(exchange="messaging", routing_key="dlr.submit_sm_resp",
                              content=answer("unread"))
        await eventually(lambda: deferToThread(server.queue_messages).addCallback(
            lambda counts: counts.get(queue) == 1), what="the first answer queued")
        await deferToThread(server.stop)
        await eventually(lambda: not factory.connected, what="jasmind's factory disconnected")
        self.assertIsNone(factory.publish(exchange="messaging",
                                          routing_key="dlr.submit_sm_resp",
                                          content=answer("in-hand")))
        self.assertEqual(len(recovery.kept), 1)

        await deferToThread(server.start)
        await eventually(lambda: recovery.restored == 1, timeout=60, what="restored")
        self.assertEqual(recovery.kept, [])
        incoming = await listen(self, settings_for(server), queue, lambda channel:
                                declare_bound_queue(channel, queue, ["dlr.submit_sm_resp"]))
        got = [(await incoming.get().addTimeout(30, reactor)).content.properties["message-id"]
               for _ in range(2)]
        self.assertEqual(got, ["unread", "in-hand"])


class ConfirmTests(TestCase):
    """Publisher confirms on jasmind's channel (:mod:`jasmin_credits.amqp_confirms`), against
    a private broker: the SMSC's answers are kept until the broker has taken them."""

    timeout = 300

    async def _answers(self, arguments: dict[str, Any] | None = None,
                       ) -> tuple[RabbitMQServer, AmqpFactory, AmqpRecovery, str]:
        """A broker, Jasmin's factory with the recovery, and a durable queue of answers
        (declared with ``arguments``) as settlement has one."""
        server = await private_broker(self, "jc-confirms-rabbitmq-")
        queue = "jc-confirms.submit_sm_resp"
        made = {}

        def install(factory: AmqpFactory) -> None:
            made["recovery"] = AmqpRecovery(factory, {}, reactor, confirms=True,
                                            event_queues=[(queue, ("dlr.submit_sm_resp",))])
            made["recovery"].install()

        factory = await jasmind_factory(self, server, install)
        await factory.chan.queue_declare(queue=queue, durable=True, arguments=arguments or {})
        await declare_exchange(factory.chan)
        await factory.chan.queue_bind(queue=queue, exchange="messaging",
                                      routing_key="dlr.submit_sm_resp")
        return server, factory, made["recovery"], queue

    def _answer(self, factory: AmqpFactory, msgid: str) -> None:
        factory.publish(exchange="messaging", routing_key="dlr.submit_sm_resp",
                        content=DLR(pdu_type=CommandId.submit_sm_resp, msgid=msgid,
                                    status=CommandStatus.ESME_ROK,
                                    smpp_msgid=b"smsc-" + msgid.encode()))

    async def _received(self, server: RabbitMQServer, queue: str, count: int) -> list[str]:
        incoming = await listen(self, settings_for(server), queue, lambda channel:
                                channel.queue_declare(queue=queue, passive=True))
        return [(await incoming.get().addTimeout(30, reactor)).content.properties["message-id"]
                for _ in range(count)]

    async def test_answers_are_kept_until_the_broker_confirms_them(self):
        server, factory, recovery, queue = await self._answers()
        confirms = recovery.confirms
        self._publish_submit_sm(factory)
        self._answer(factory, "a-1")
        self._answer(factory, "a-2")
        # (the broker's confirms cannot have come yet: this reactor turn has not ended)
        factory.publish(exchange="messaging", routing_key=f"submit.sm.resp.{CID}",
                        content=SubmitSmContent("alice", b"resp", f"submit.sm.resp.{CID}",
                                                msgid="r"))  # (not kept)
        self.assertEqual([args["content"].properties["message-id"]
                          for args in confirms.pending.values()], ["m", "a-1", "a-2"])
        self.assertEqual(list(confirms.pending), [1, 2, 3])  # numbered as the broker does
        await eventually(lambda: not confirms.pending, what="all confirmed")
        self.assertEqual(confirms.published, 4)
        self.assertTrue(factory.connected)

    async def test_a_publication_refused_at_once_is_not_kept(self):
        """On a channel already closed (the broker closes it as it stops, before the
        connection goes), the publish fails at once and Jasmin refuses the message: it must
        not be published later, or a message told ESME_RSUBMITFAIL would be sent."""
        server, factory, recovery, queue = await self._answers()
        confirms = recovery.confirms
        # a channel error (another queue's arguments) makes the broker close jasmind's channel
        with self.assertRaises(Closed):
            await factory.chan.queue_declare(queue=queue, durable=True,
                                             arguments={"x-max-length": 1})
        self.assertTrue(factory.connected)  # (only the channel is gone)
        failed = []
        factory.publish(exchange="messaging", routing_key=f"submit.sm.{CID}",
                        content=SubmitSmContent("alice", b"pdu", f"submit.sm.resp.{CID}",
                                                msgid="refused")).addErrback(failed.append)
        self.assertEqual(len(failed), 1)
        self.assertEqual((confirms.pending, confirms.published), ({}, 0))

    def _publish_submit_sm(self, factory: AmqpFactory) -> None:
        factory.publish(exchange="messaging", routing_key=f"submit.sm.{CID}",
                        content=SubmitSmContent("alice", pickle.dumps(smpp_message(), 2),
                                                f"submit.sm.resp.{CID}", msgid="m"))

    async def test_an_answer_the_broker_never_took_is_published_again(self):
        """The broker stops reading (SIGSTOP) and dies (SIGKILL) with an answer unread on
        jasmind's connection: what happens to an answer published as the broker stops.
        Jasmin alone loses it; it is published again once reconnected, and the answer the
        broker had confirmed is not."""
        server, factory, recovery, queue = await self._answers()
        self._answer(factory, "taken")
        await eventually(lambda: not recovery.confirms.pending, what="the first confirmed")
        os.killpg(server.process.pid, signal.SIGSTOP)
        self._answer(factory, "never-read")
        self.assertEqual(len(recovery.confirms.pending), 1)
        await deferToThread(server.kill)
        await eventually(lambda: not factory.connected, timeout=60,
                         what="jasmind's factory disconnected")
        await deferToThread(server.stop)  # (our epmd too, so that start starts it again)
        await deferToThread(server.start)
        await eventually(lambda: recovery.restored == 1, timeout=90, what="restored")
        self.assertEqual(recovery.kept, [])
        counts = await eventually(lambda: deferToThread(server.queue_messages).addCallback(
            lambda counts: counts if counts.get(queue, 0) >= 2 else None), timeout=60,
            what="both answers queued")
        self.assertEqual(counts[queue], 2)
        self.assertEqual(await self._received(server, queue, 2), ["taken", "never-read"])

    async def test_an_answer_the_broker_refuses_is_published_again(self):
        """A full queue that rejects publications (``x-overflow: reject-publish``): the
        broker answers ``basic.nack``, and the answer goes again until there is room."""
        server, factory, recovery, queue = await self._answers(
            {"x-max-length": 1, "x-overflow": "reject-publish"})
        with self.assertLogs("jasmin-credits", "WARNING") as logs:
            self._answer(factory, "first")
            self._answer(factory, "refused")
            await eventually(lambda: logs.output, what="the refusal logged")
        self.assertIn("RabbitMQ refused 1 of Jasmin's publications", logs.output[0])
        self.assertEqual(await self._received(server, queue, 2), ["first", "refused"])


class PersistentTests(TestCase):
    """Which of Jasmin's publications are marked persistent (Jasmin's own content classes)."""

    def _marked(self, routing_key: str, content: Any) -> Any:
        persistent({"exchange": "messaging", "routing_key": routing_key, "content": content})
        return content.properties.get("delivery-mode")

    def test_settlements_events_are_persistent(self):
        submit = SubmitSmContent("alice", pickle.dumps(smpp_message(), 2),
                                 f"submit.sm.resp.{CID}")
        self.assertEqual(self._marked(f"submit.sm.{CID}", submit), 2)
        answer = DLR(pdu_type=CommandId.submit_sm_resp, msgid="m",
                     status=CommandStatus.ESME_RSUBMITFAIL)
        self.assertEqual(self._marked("dlr.submit_sm_resp", answer), 2)

    def test_other_publications_stay_as_jasmin_made_them(self):
        content = SubmitSmContent("alice", b"x", f"submit.sm.resp.{CID}")
        self.assertIsNone(self._marked(f"submit.sm.resp.{CID}", content))
        self.assertIsNone(self._marked(f"deliver.sm.{CID}", content))
