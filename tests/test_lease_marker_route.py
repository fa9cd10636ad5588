"""Credit lease end markers across a real RabbitMQ restart, for both publishers: jasmind's own
``AmqpFactory`` (our launcher publishes markers on its channel) and the drop-in
interceptord's :class:`~jasmin_credits.amqp.AmqpPublisher`.

A marker due while the broker is down is published once it is back, and reaches
settlement's queue although nothing else has bound it again: Jasmin's ``messaging`` exchange
is not durable, so a restart takes settlement's binding with it, and settlement's consumer
is not running here. Without :mod:`jasmin_credits.marker_route` (and the drop-in's own
declaration) the marker is routed nowhere and the queue stays empty.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jasmin_credits.amqp import AmqpPublisher, declare_bound_queue
from jasmin_credits.config import parse_config
from jasmin_credits.devservices import RabbitMQServer
from jasmin_credits.runtime import CreditsRuntime
from jasmin_credits.settlement import (
    LEASE_END_HEADER,
    LEASE_END_KEY,
    SUBMIT_SM_KEYS,
    QueueNames,
)

from .polling import eventually
from .rabbitmq_support import jasmind_factory, listen, private_broker, settings_for
from .redis_support import connect

PRICE = 10


class LeaseMarkerAcrossBrokerRestartTests(TestCase):
    timeout = 300

    async def _broker(self) -> RabbitMQServer:
        return await private_broker(self, "jc-marker-rabbitmq-")

    async def _runtime(self, server: RabbitMQServer, mode: str) -> CreditsRuntime:
        config = parse_config({
            "redis": {"port": int(os.environ["JC_TEST_REDIS_PORT"]),
                      "key_prefix": f"t{uuid.uuid4().hex[:8]}"},
            "charging": {"mode": mode, "lease": {"messages": 4}},
            "settlement": {"enabled": False, "process": "gateway"},
            "events": {"enabled": False},
        }, "test.yaml")
        config = dataclasses.replace(config, amqp=settings_for(server))  # quick reconnects
        runtime = CreditsRuntime(config, reactor=reactor, redis=await connect(self))
        await runtime.start()
        self.addCleanup(runtime.stop)
        await runtime.store.top_up("alice", 1000, op_id="t", actor="t")
        return runtime

    async def test_jasminds_factory_publishes_the_marker_after_a_restart(self):
        server = await self._broker()
        factory = await jasmind_factory(self, server)
        runtime = await self._runtime(server, "pre-routing")
        runtime.install_client_manager(SimpleNamespace(
            perspective_submit_sm=lambda *args, **kw: None, amqpBroker=factory))
        await self._marker_survives_a_restart(server, runtime, lambda: factory.connected)

    async def test_drop_in_publisher_publishes_the_marker_after_a_restart(self):
        server = await self._broker()
        runtime = await self._runtime(server, "interceptor-pb")
        runtime.start_drop_in_leases()
        [publisher] = [s for s in runtime.services if isinstance(s, AmqpPublisher)]
        await self._marker_survives_a_restart(server, runtime, lambda: publisher.connected)

    async def _marker_survives_a_restart(self, server, runtime, connected) -> None:
        book = runtime.charger.leases
        queue = QueueNames.with_prefix(runtime.config.settlement.queue_prefix).submit_sm
        await eventually(book.ready, what="lease markers can be published")
        book.ask("alice", PRICE)
        await book.requests()
        [lease] = book.open()

        await deferToThread(server.stop)
        await eventually(lambda: not connected(), what="the publisher sees the broker gone")
        with self.assertLogs("jasmin-credits", "WARNING") as logs:
            runtime.wallet_cut("alice")  # (as when an operator debits the wallet)
            self.assertEqual(book.open(), [])
            await eventually(lambda: any(lease.id in line for line in logs.output),
                             timeout=30, what="the marker's publish failing")
        self.assertIn("could not publish the end of lease", logs.output[0])

        await deferToThread(server.start)

        def one_marker_waiting():
            return deferToThread(server.queue_messages).addCallback(
                lambda counts: counts.get(queue) == 1)

        await eventually(one_marker_waiting, timeout=90, interval=0.5,
                         what=f"the marker waiting in {queue}")
        incoming = await listen(self, settings_for(server), queue,
                                lambda channel: declare_bound_queue(channel, queue,
                                                                    SUBMIT_SM_KEYS))
        message = await incoming.get().addTimeout(30, reactor)
        self.assertEqual(message.routing_key, LEASE_END_KEY)
        self.assertEqual(message.content.properties["headers"],
                         {LEASE_END_HEADER: f"alice {lease.id}"})
