"""Our Redis connections: requests leave at once, and nothing is lost or reordered when
the socket takes only part of them (real TCP connections on loopback)."""

from __future__ import annotations

import os

import txredisapi
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from jasmin_credits import redis_client
from jasmin_credits.redis_client import FastRedisProtocol, connection_pool, write_at_once


class _Collect(protocol.Protocol):
    def __init__(self, expected: int, done: defer.Deferred):
        self.data = b""
        self.expected = expected
        self.done = done

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.data += data
        if len(self.data) >= self.expected and not self.done.called:
            self.done.callback(self.data)


class _Stingy:
    """A socket that takes at most ``limit`` bytes per send, and refuses the first
    ``refusals`` sends as a full socket would (EAGAIN)."""

    def __init__(self, sock, limit: int, refusals: int = 0):
        self._sock = sock
        self.limit = limit
        self.refusals = refusals
        self.sends = 0

    def send(self, data) -> int:
        self.sends += 1
        if self.refusals:
            self.refusals -= 1
            raise BlockingIOError("would block")
        return self._sock.send(bytes(data[:self.limit]))

    def __getattr__(self, name):
        return getattr(self._sock, name)


class WriteAtOnceTests(TestCase):
    async def _pair(self, expected: int):
        """A loopback TCP connection: our client's transport, and what the server got."""
        got = defer.Deferred()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(lambda: _Collect(expected, got)))
        self.addCleanup(port.stopListening)
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), protocol.Protocol())
        self.addCleanup(client.transport.loseConnection)
        write_at_once(client.transport)
        return client.transport, got

    async def test_a_write_leaves_before_the_reactor_turns(self):
        transport, got = await self._pair(5)
        transport.write(b"hello")
        # Twisted's own write would still hold it, waiting for the reactor's next turn.
        self.assertEqual((transport.dataBuffer, transport._tempDataBuffer), (b"", []))
        self.assertEqual(await got, b"hello")

    async def test_what_the_socket_does_not_take_follows_in_order(self):
        payload = [bytes([65 + i]) * 50 for i in range(6)]
        transport, got = await self._pair(300)
        stingy = _Stingy(transport.socket, limit=7, refusals=0)
        transport.socket = stingy
        for chunk in payload:
            transport.write(chunk)  # after the first, the rest waits behind its remainder
        self.assertEqual(stingy.sends, 1)
        self.assertEqual(await got, b"".join(payload))

    async def test_a_refused_send_goes_the_buffered_way(self):
        transport, got = await self._pair(12)
        transport.socket = _Stingy(transport.socket, limit=1 << 16, refusals=1)
        transport.write(b"first ")
        transport.write(b"second")
        self.assertEqual(transport._tempDataBuffer, [b"first ", b"second"])
        self.assertEqual(await got, b"first second")

    def test_other_transports_are_left_alone(self):
        class NotTcp:
            def write(self, data):
                pass

        other = NotTcp()
        write_at_once(other)
        self.assertNotIn("write", vars(other))


class PoolTests(TestCase):
    async def test_the_pool_sends_at_once_and_reads_replies(self):
        pool = await connection_pool(reactor, "127.0.0.1", int(os.environ["JC_TEST_REDIS_PORT"]),
                                     poolsize=2, lazy=False)
        self.addCleanup(pool.disconnect)
        connections = list(pool._factory.pool)
        self.assertEqual(len(connections), 2)
        for connection in connections:
            self.assertIn("write", vars(connection.transport))  # write_at_once installed
        replies = await defer.gatherResults(
            [pool.execute_command("ECHO", f"message {i}") for i in range(200)])
        self.assertEqual(replies, [f"message {i}" for i in range(200)])


class EncoderTests(TestCase):
    """Our encoder writes the bytes txredisapi's own would (hiredis or the Python pass)."""

    def _protocols(self):
        ours = FastRedisProtocol.__new__(FastRedisProtocol)
        stock = txredisapi.RedisProtocol.__new__(txredisapi.RedisProtocol)
        for p in (ours, stock):
            p.charset, p.errors = "utf-8", "strict"
        return ours, stock

    def test_a_batch_call_encodes_as_txredisapi_would(self):
        ours, stock = self._protocols()
        args = ("EVALSHA", "f" * 40, 2, "jc:{u:é}:w", "jc:{u:é}:r:1", 2, "reserve", 0, -7,
                12345678901234567890, b"\x00\xff raw", "", "€ unicode ✓")
        self.assertTrue(redis_client._pack_command is not None, "hiredis without pack_command")
        self.assertEqual(ours._build_command(*args), stock._build_command(*args))

    def test_types_hiredis_refuses_follow_txredisapi_rules(self):
        ours, stock = self._protocols()
        args = ("SET", True, bytearray(b"ab"), None)
        self.assertEqual(ours._build_command(*args), stock._build_command(*args))

    def test_the_python_pass_matches_too(self):
        ours, stock = self._protocols()
        args = ("HSET", "k", "f", 42, b"v", "é", bytearray(b"x"), False)
        self.assertEqual(ours._build_command_python(args), stock._build_command(*args))

    async def test_real_redis_reads_what_it_writes(self):
        pool = await connection_pool(reactor, "127.0.0.1", int(os.environ["JC_TEST_REDIS_PORT"]),
                                     poolsize=1, lazy=False)
        self.addCleanup(pool.disconnect)
        key = "jc-test:encoder"
        self.addCleanup(pool.execute_command, "DEL", key)
        value = "€ \r\n$3\r\n ✓"
        await pool.execute_command("HSET", key, "text", value, "n", -12, "raw", b"\x00\xff")
        got = await pool.execute_command("HMGET", key, "text", "n")
        self.assertEqual(got, [value, "-12"])
