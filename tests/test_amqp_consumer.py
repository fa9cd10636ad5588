"""ConsumerClient's short path for deliveries and acks, against a real RabbitMQ: the same
messages as txAMQP's own path, acks that the broker honours, nothing lost."""

from __future__ import annotations

import uuid

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from txamqp.client import Closed, TwistedDelegate
from txamqp.connection import Header
from txamqp.content import Content

from jasmin_credits.amqp import AmqpConnection

from .rabbitmq_support import rabbitmq, rabbitmq_server  # noqa: F401 - fixtures

BODIES = [
    b"",  # a header frame with size 0 and no body frame
    b"x",
    bytes(range(256)) * 4,
    b"\xce" * 300_000,  # larger than a frame: several body frames; 0xCE is the frame end
]


HEADERS = {"kind": "t", "raw": b"\xff\xfe pickled", "big": 2**32 - 1}
"""Besides ``n``: what Jasmin's headers hold (strings, pickled bytes, numbers), as txAMQP's
encoder writes them (it writes no nested table, and non-ASCII text with a wrong length)."""


def published(i: int, body: bytes) -> Content:
    return Content(body, properties={"message-id": f"m{i}", "headers": {"n": i, **HEADERS},
                                     "priority": 1})


class _CodecSpy:
    """Counts content headers decoded by txAMQP's own ``Header.decode``."""

    def __init__(self, test: TestCase):
        self.count = 0
        original = Header.decode

        def counting(spec, dec):
            self.count += 1
            return original(spec, dec)

        Header.decode = staticmethod(counting)
        test.addCleanup(setattr, Header, "decode", staticmethod(original))


class _SlowPathSpy:
    """Counts the deliveries that take txAMQP's own path (TwistedDelegate.basic_deliver)."""

    def __init__(self, test: TestCase):
        self.count = 0
        self.seen = Deferred()
        original = TwistedDelegate.basic_deliver

        def counting(delegate, ch, msg):
            self.count += 1
            if not self.seen.called:
                self.seen.callback(msg)
            return original(delegate, ch, msg)

        TwistedDelegate.basic_deliver = counting
        test.addCleanup(setattr, TwistedDelegate, "basic_deliver", original)


@pytest.mark.usefixtures("rabbitmq")
class ConsumerClientTests(TestCase):
    timeout = 120

    async def _consumer(self, queue: str, tag: str):
        """A connection consuming ``queue`` (acks required); returns (connection, incoming)."""
        got = {}

        async def on_ready(client, channel):
            await channel.queue_declare(queue=queue, durable=False, auto_delete=False)
            await channel.basic_consume(queue=queue, no_ack=False, consumer_tag=tag)
            got["incoming"] = await client.queue(tag)

        connection = AmqpConnection(self.amqp_settings, on_ready)
        connection.start()
        self.addCleanup(connection.stop)
        await connection.when_ready()
        return connection, got["incoming"]

    async def _publisher(self):
        connection = AmqpConnection(self.amqp_settings, lambda client, channel: None)
        connection.start()
        self.addCleanup(connection.stop)
        return await connection.when_ready()

    async def test_deliveries_match_what_was_published(self):
        queue = f"jc-test-{uuid.uuid4().hex[:8]}"
        spy = _SlowPathSpy(self)
        consumer, incoming = await self._consumer(queue, "fast")
        codec = _CodecSpy(self)
        channel = await self._publisher()
        for i, body in enumerate(BODIES):
            await channel.basic_publish(exchange="", routing_key=queue,
                                        content=published(i, body))
        for i, body in enumerate(BODIES):
            message = await incoming.get().addTimeout(30, reactor)
            self.assertEqual(message.content.body, body)
            properties = message.content.properties
            self.assertEqual((properties["message-id"], properties["headers"],
                              properties["priority"]), (f"m{i}", {"n": i, **HEADERS}, 1))
            self.assertEqual((message.routing_key, message.exchange, message.consumer_tag,
                              message.redelivered), (queue, "", "fast", False))
            consumer.client.ack(consumer.channel, message.delivery_tag)
        self.assertEqual(spy.count, 0)  # every one took the short path
        self.assertEqual(codec.count, 0)  # and was decoded from the bytes by amqp_frames
        declared = await consumer.channel.queue_declare(queue=queue, passive=True)
        self.assertEqual(declared.message_count, 0)  # acked: gone from the broker

    async def test_unacked_deliveries_come_back_and_acked_ones_do_not(self):
        queue = f"jc-test-{uuid.uuid4().hex[:8]}"
        consumer, incoming = await self._consumer(queue, "first")
        channel = await self._publisher()
        for i in range(6):
            await channel.basic_publish(exchange="", routing_key=queue,
                                        content=published(i, b"body %d" % i))
        for i in range(6):
            message = await incoming.get().addTimeout(30, reactor)
            if i % 2 == 0:
                consumer.client.ack(consumer.channel, message.delivery_tag)
        await consumer.shutdown()
        with self.assertRaises(Closed):  # a closed connection acks nothing
            consumer.client.ack(consumer.channel, message.delivery_tag)
        _, again = await self._consumer(queue, "second")
        back = []
        for _ in range(3):
            message = await again.get().addTimeout(30, reactor)
            back.append((message.content.body, message.redelivered))
        self.assertEqual(sorted(back), [(b"body 1", True), (b"body 3", True),
                                        (b"body 5", True)])

    async def test_deliveries_to_a_consumer_without_a_queue_take_txamqps_path(self):
        queue = f"jc-test-{uuid.uuid4().hex[:8]}"
        spy = _SlowPathSpy(self)
        got = {}

        async def on_ready(client, channel):
            await channel.queue_declare(queue=queue, durable=False, auto_delete=True)
            await channel.basic_consume(queue=queue, no_ack=True, consumer_tag="late")
            got["client"] = client

        connection = AmqpConnection(self.amqp_settings, on_ready)
        connection.start()
        self.addCleanup(connection.stop)
        await connection.when_ready()
        channel = await self._publisher()
        await channel.basic_publish(exchange="", routing_key=queue, content=published(0, b"a"))
        # nobody asked client.queue("late"): txAMQP's path creates it and delivers there
        delivered = await spy.seen.addTimeout(30, reactor)
        message = await (await got["client"].queue("late")).get().addTimeout(30, reactor)
        self.assertIs(message, delivered)
        self.assertEqual((message.content.body, spy.count), (b"a", 1))
