"""AmqpPublisher, what the drop-in interceptord publishes its credit lease end markers
with, against a real RabbitMQ: a marker reaches a queue bound as settlement's is, and a
publish with no connection ready fails at once with one clear error."""

from __future__ import annotations

import socket
import uuid

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from jasmin_credits.amqp import (
    AmqpPublisher,
    AmqpUnavailable,
    declare_bound_queue,
    declare_exchange,
)
from jasmin_credits.settlement import LEASE_END_HEADER, LEASE_END_KEY, lease_end_marker

from .rabbitmq_support import (  # noqa: F401 - fixtures
    listen,
    rabbitmq,
    rabbitmq_server,
    settings_for,
)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _NoBroker:
    port = closed_port()


@pytest.mark.usefixtures("rabbitmq")
class AmqpPublisherTests(TestCase):
    timeout = 120

    async def _settlement_queue(self):
        """A queue bound to ``messaging`` under ``submit.sm.*`` as settlement's is; returns
        the txAMQP queue of its deliveries."""
        queue = f"jc-test-{uuid.uuid4().hex[:8]}"

        async def declare(channel):
            await declare_bound_queue(channel, queue, ["submit.sm.*"])
            self.addCleanup(channel.queue_delete, queue=queue)

        return await listen(self, self.amqp_settings, queue, declare)

    async def test_lease_end_marker_reaches_a_submit_sm_queue(self):
        incoming = await self._settlement_queue()
        publisher = AmqpPublisher(self.amqp_settings,
                                  lambda client, channel: declare_exchange(channel))
        publisher.start()
        self.addCleanup(publisher.stop)
        await publisher.connection.when_ready()
        self.assertTrue(publisher.connected)
        await publisher.publish(**lease_end_marker("alice", "L1"))
        message = await incoming.get().addTimeout(30, reactor)
        self.assertEqual(message.routing_key, LEASE_END_KEY)
        properties = message.content.properties
        self.assertEqual(properties["headers"], {LEASE_END_HEADER: "alice L1"})
        self.assertEqual(properties["delivery-mode"], 2)  # persistent, as Jasmin's messages
        await publisher.stop()
        self.assertFalse(publisher.connected)
        with self.assertRaises(AmqpUnavailable):
            await publisher.publish(**lease_end_marker("alice", "L2"))

    async def test_publish_while_not_connected_fails_at_once_with_one_clear_error(self):
        """Nothing is kept for later: with no broker listening (the connection cannot become
        ready), a publish fails at once."""
        publisher = AmqpPublisher(settings_for(_NoBroker, connect_timeout=1.0),
                                  lambda client, channel: None)
        publisher.start()
        self.addCleanup(publisher.stop)
        self.assertFalse(publisher.connected)
        published = publisher.publish(**lease_end_marker("alice", "L1"))
        self.assertTrue(published.called)  # nothing waits for a broker that is not there
        with self.assertRaises(AmqpUnavailable) as raised:
            await published
        self.assertEqual(str(raised.exception), "AMQP connection not ready")
