"""MarkerRoute's bookkeeping on a fake of jasmind's AMQP factory: one declaration per
connection, on a channel of its own, and a failed one tried again later on a new channel.
What it declares, against a real RabbitMQ restart: tests/test_lease_marker_route.py."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jasmin_credits.marker_route import (
    DECLARE_TIMEOUT,
    FIRST_CHANNEL,
    RETRY_DELAY,
    MarkerRoute,
)


class _Channel:
    def __init__(self, channel_id: int):
        self.id = channel_id
        self.closed = False

    def channel_open(self):
        return succeed(None)

    def channel_close(self):
        self.closed = True
        return succeed(None)


class _Client:
    """What of txAMQP's client MarkerRoute uses: ``channel(id)``."""

    def __init__(self):
        self.channels: dict[int, _Channel] = {}

    def channel(self, channel_id: int):
        return succeed(self.channels.setdefault(channel_id, _Channel(channel_id)))


class _Factory:
    """jasmind's AmqpFactory: ``connected`` and ``client``, a new client per connection."""

    def __init__(self):
        self.connected = False
        self.client = None

    def connect(self) -> _Client:
        self.connected, self.client = True, _Client()
        return self.client


class MarkerRouteTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.factory = _Factory()
        self.declared: list[_Channel] = []
        self.refuse = 0
        self.route = MarkerRoute(self.factory, self.declare, self.clock)

    def declare(self, channel):
        if self.refuse:
            self.refuse -= 1
            return fail(PermissionError("ACCESS_REFUSED"))
        self.declared.append(channel)
        return succeed(None)

    def test_declared_once_per_connection_on_a_channel_of_its_own(self):
        self.assertFalse(self.route.ready())  # not connected: nothing asked
        first = self.factory.connect()
        self.assertTrue(self.route.ready())  # (the fake answers at once)
        self.assertTrue(self.route.ready())
        self.assertEqual([(c.id, c.closed) for c in self.declared], [(FIRST_CHANNEL, True)])
        self.factory.connected = False  # the broker went away
        self.assertFalse(self.route.ready())
        second = self.factory.connect()
        self.assertTrue(self.route.ready())
        self.assertEqual(len(self.declared), 2)
        self.assertIs(second.channels[FIRST_CHANNEL], self.declared[1])
        self.assertIsNot(first.channels[FIRST_CHANNEL], self.declared[1])

    def test_a_refused_declaration_is_tried_again_later_on_a_new_channel(self):
        self.factory.connect()
        self.refuse = 1
        with self.assertLogs("jasmin-credits", "WARNING") as logged:
            self.assertFalse(self.route.ready())
        self.assertIn("ACCESS_REFUSED", logged.output[0])
        self.assertFalse(self.route.ready())  # not before RETRY_DELAY
        self.assertEqual(self.declared, [])
        self.clock.advance(RETRY_DELAY)
        self.assertTrue(self.route.ready())
        self.assertEqual([c.id for c in self.declared], [FIRST_CHANNEL + 1])

    def test_a_declaration_the_broker_never_answers_is_cancelled_and_tried_again(self):
        client = self.factory.connect()
        silent = Deferred()
        client.channel = lambda channel_id: silent
        self.assertFalse(self.route.ready())
        with self.assertLogs("jasmin-credits", "WARNING"):
            self.clock.advance(DECLARE_TIMEOUT)
        del client.channel  # (the broker answers again)
        self.clock.advance(RETRY_DELAY)
        self.assertTrue(self.route.ready())
        self.assertEqual([c.id for c in self.declared], [FIRST_CHANNEL + 1])
