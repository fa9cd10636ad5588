"""A txAMQP connection to Jasmin's RabbitMQ that comes back by itself.

Jasmin (``jasmin/queues/factory.py``) logs in with AMQPLAIN, opens channel 1 and declares
``exchange_declare(exchange='messaging', type='topic')`` with every other flag left at its
default: not passive, not durable, not auto-deleted, not internal. We declare the exchange
with exactly those flags (a declaration with other flags would close our channel with
PRECONDITION_FAILED, or Jasmin's) and bind queues of our own, named ``jasmin_credits.*``
and durable, so events published while we are away wait for us.

:class:`AmqpConnection` keeps one connection up: a TCP connect timeout, a timeout on the
AMQP handshake, and reconnection with exponential back-off capped at
``AmqpSettings.max_retry_delay`` (Jasmin waits a fixed 10 s; txAMQP alone never retries).
After every (re)connection it calls ``on_ready(client, channel)``, where the caller declares
and binds its queues and starts consuming.
"""

from __future__ import annotations

import inspect
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from txamqp.client import Closed, TwistedDelegate
from txamqp.connection import Header, Method
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQClient
from txamqp.spec import load as load_spec

from .amqp_frames import BODY, FRAME_END, FRAME_HEAD, HEADER, METHOD, DeliveryDecoder

log = logging.getLogger(__name__)

EXCHANGE = "messaging"
"""Jasmin's topic exchange for submit.sm.*, dlr.* and deliver.sm.* events."""

QUEUE_PREFIX = "jasmin_credits"
"""Default start of our queue names (``jasmin_credits.submit_sm``, ...)."""


def default_spec_path() -> str:
    """The AMQP 0-9-1 spec shipped in the txAMQP3 package (the Jasmin wheel ships none)."""
    import txamqp

    spec = Path(txamqp.__file__).parent / "specs" / "standard" / "amqp0-9-1.stripped.xml"
    if not spec.exists():
        raise FileNotFoundError(f"AMQP spec not found at {spec}")
    return str(spec)


@dataclass(frozen=True)
class AmqpSettings:
    """Where the broker is and how to keep the connection up (Jasmin's ``[amqp-broker]``)."""

    host: str = "127.0.0.1"
    port: int = 5672
    vhost: str = "/"
    username: str = "guest"
    password: str = "guest"
    heartbeat: int = 0
    """Seconds between AMQP heartbeats; 0 disables them (Jasmin's default)."""
    spec: str | None = None
    """Path of the AMQP spec XML; None: the one shipped with txAMQP3."""
    connect_timeout: float = 10.0
    """Seconds for the TCP connect, and again for the AMQP handshake and ``on_ready``."""
    initial_retry_delay: float = 0.5
    max_retry_delay: float = 30.0
    """Cap of the exponential reconnection back-off, in seconds."""
    publisher_confirms: bool = False
    """Our launcher puts jasmind's own channel in publisher-confirm mode
    (:mod:`jasmin_credits.amqp_confirms`): what the broker did not confirm when the
    connection was lost is published again. Off by default: it slows window-1 ingest."""

    @classmethod
    def from_jasmin(cls, config: Any, **overrides: Any) -> AmqpSettings:
        """Settings from Jasmin's ``AmqpConfig`` (``jasmin.queues.configs``) or alike."""
        values = {name: getattr(config, name) for name in
                  ("host", "port", "vhost", "username", "password", "heartbeat", "spec")
                  if hasattr(config, name)}
        if values.get("spec") and not Path(values["spec"]).exists():
            values["spec"] = None
        values.update(overrides)
        return cls(**values)


def declare_exchange(channel: Any) -> Deferred:
    """Declare ``messaging`` exactly as Jasmin does (topic, not durable, not auto-delete)."""
    # AMQP 0-9-1 has no auto-delete/internal fields here (reserved bits, always 0).
    return channel.exchange_declare(exchange=EXCHANGE, type="topic", passive=False,
                                    durable=False)


async def declare_bound_queue(channel: Any, queue: str, routing_keys: Iterable[str]) -> None:
    """Declare our durable ``queue`` and bind it to ``messaging`` under ``routing_keys``."""
    await declare_exchange(channel)
    await channel.queue_declare(queue=queue, durable=True, exclusive=False, auto_delete=False)
    for key in routing_keys:
        await channel.queue_bind(queue=queue, exchange=EXCHANGE, routing_key=key)


OnReady = Callable[[AMQClient, Any], "Awaitable[None] | Deferred | None"]

_ACK_FRAME = struct.Struct("!BHIHHQBB")
"""A ``basic.ack`` method frame: type 1, channel, size 13, class 60, method 80, the
delivery tag, the ``multiple`` bit (0), frame end 0xCE (AMQP 0-9-1, sections 4.2.3, 1.8)."""


class _Delivery:
    """A ``basic.deliver`` whose content frames are still arriving."""

    __slots__ = ("method", "queue", "header", "chunks", "received")

    def __init__(self, method: Method, queue: Any):
        self.method = method
        self.queue = queue
        self.header: Header | None = None
        self.chunks: list[bytes] = []
        self.received = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.received += len(chunk)

    def complete(self) -> bool:
        return self.header is not None and self.received >= self.header.size

    def message(self) -> Message:
        header = self.header
        assert header is not None
        content = Content(b"".join(self.chunks), [], header.properties.copy())
        return Message(self.method.method, self.method.args, content)


class ConsumerClient(AMQClient):
    """txAMQP's client with a short path for the messages a consumer receives and acks.

    txAMQP hands each delivered message through about a dozen Deferreds and generator
    coroutines (the frame's channel looked up under a lock, a work queue, the content read
    frame by frame through another queue, the consumer's queue looked up under a second
    lock): in jasmin-credits-settled that was more than half of the CPU it spends per
    Jasmin event (docs/benchmarks.md). Once :meth:`fast_deliveries` is on, a
    ``basic.deliver`` to a consumer whose queue exists is assembled here as its frames
    arrive (the method, the content header, the body frames: contiguous on their channel,
    as AMQP requires), decoded from the received bytes by
    :class:`~jasmin_credits.amqp_frames.DeliveryDecoder` rather than txAMQP's codec, and
    put into that consumer's queue as the same txAMQP ``Message``.
    Every other frame (responses, methods the broker sends, deliveries to consumers we
    have no queue for, and a delivery that began while txAMQP still held bytes received
    before the switch) takes txAMQP's own path. :meth:`ack` writes a ``basic.ack`` frame
    itself instead of building it through ``channel.basic_ack``.
    """

    _fast = False

    def fast_deliveries(self) -> None:
        """Take the short path for deliveries from now on."""
        self._fast = True
        self._decoder = DeliveryDecoder(self.spec)
        self._partial: dict[int, _Delivery] = {}
        self._raw = b""

    def dataReceived(self, data: bytes) -> Any:  # noqa: N802 - Twisted's name
        """Split frames ourselves and decode a delivery's frames with
        :class:`~jasmin_credits.amqp_frames.DeliveryDecoder`; hand every other frame, whole
        and alone, to txAMQP's own receiver (which then never holds a partial frame).
        Until the short path is on, or while txAMQP still holds bytes it received before
        (or is paused, or not in frame mode yet), everything goes to txAMQP."""
        if (not self._fast or self._FrameReceiver__buffer or not self.frame_mode
                or self.paused):
            return super().dataReceived(data)
        buf = self._raw + data if self._raw else data
        pos, size = 0, len(buf)
        while size - pos > FRAME_HEAD.size:
            kind, channel, length = FRAME_HEAD.unpack_from(buf, pos)
            end = pos + FRAME_HEAD.size + length  # where the frame-end octet must be
            if end >= size:
                break
            if buf[end] == FRAME_END and self._take_raw(kind, channel, buf,
                                                        pos + FRAME_HEAD.size, end):
                self._taken()
            else:
                why = super().dataReceived(buf[pos:end + 1])
                if why or self.transport is None or self.transport.disconnecting:
                    self._raw = buf[end + 1:]
                    return why
            pos = end + 1
        self._raw = buf[pos:]
        return None

    def _take_raw(self, kind: int, channel: int, buf: bytes, start: int, end: int) -> bool:
        """Whether the frame at ``buf[start:end]`` belongs to a delivery taken on the short
        path (a ``basic.deliver`` to a consumer whose queue exists, and its content)."""
        delivery = self._partial.get(channel)
        if delivery is None:
            if kind != METHOD:
                return False  # a content txAMQP's path began (before the switch): its own
            method = self._decoder.deliver_method(buf, start, end)
            if method is None:
                return False
            queue = self.queues.get(method.args[0])  # consumer-tag
            if queue is None:
                return False  # txAMQP creates the queue; its path delivers this one
            self._partial[channel] = _Delivery(method, queue)
            return True
        if kind == HEADER:
            delivery.header = self._decoder.header(buf, start, end)
        elif kind == BODY:
            delivery.add(buf[start:end])
        else:  # AMQP forbids this inside a content; the broker will close the channel
            del self._partial[channel]
            return False
        if delivery.complete():
            del self._partial[channel]
            delivery.queue.put(delivery.message())
        return True

    def _taken(self) -> None:
        if self.heartbeatInterval > 0 and not self.closed:
            self.reschedule_check_heartbeat()  # as txAMQP's process_frame

    def ack(self, channel: Any, delivery_tag: int) -> None:
        """Acknowledge one delivery received on ``channel``."""
        if self.closed or channel.closed or self.transport is None:
            raise Closed("channel closed: the broker redelivers unacknowledged messages")
        self.transport.write(_ACK_FRAME.pack(1, channel.id, 13, 60, 80, delivery_tag, 0,
                                             self.FRAME_END))
        self.reschedule_send_heartbeat()  # as txAMQP's send_frame (a no-op without them)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self._partial = {}
        self._raw = b""
        super().connectionLost(reason)


class _Factory:
    """Builds one txAMQP client per connection (what ``AmqpFactory.buildProtocol`` does)."""

    def __init__(self, settings: AmqpSettings, clock: IReactorTime):
        self.spec = load_spec(settings.spec or default_spec_path())
        self.settings = settings
        self.clock = clock

    def doStart(self) -> None:  # noqa: N802 - IProtocolFactory
        pass

    def doStop(self) -> None:  # noqa: N802 - IProtocolFactory
        pass

    def buildProtocol(self, addr: Any) -> ConsumerClient:  # noqa: N802 - IProtocolFactory
        return ConsumerClient(TwistedDelegate(), self.settings.vhost, self.spec,
                         heartbeat=self.settings.heartbeat, clock=self.clock)


class AmqpConnection:
    """One AMQP connection and channel, reconnected with capped back-off when lost.

    ``on_ready(client, channel)`` runs after each connection is authenticated and channel 1
    is open (it may return an awaitable or a Deferred); the connection counts as ready
    only when it has finished. If it fails or times out, the connection is dropped and
    retried. ``reactor`` makes the TCP connections, ``clock`` times retries, timeouts and
    heartbeats; both default to the global reactor.
    """

    def __init__(self, settings: AmqpSettings, on_ready: OnReady, *,
                 reactor: IReactorTCP | None = None, clock: IReactorTime | None = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        self.settings = settings
        self.on_ready = on_ready
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor  # type: ignore
        self.client: AMQClient | None = None
        self.channel: Any = None
        self.connections = 0
        """How many connections became ready so far (a restart shows as 2)."""
        endpoint = TCP4ClientEndpoint(reactor, settings.host, settings.port,
                                      timeout=settings.connect_timeout)
        self._service = ClientService(
            endpoint, _Factory(settings, self.clock),
            retryPolicy=backoffPolicy(initialDelay=settings.initial_retry_delay,
                                      maxDelay=settings.max_retry_delay),
            clock=self.clock, prepareConnection=self._prepare)

    def start(self) -> None:
        """Start connecting (and reconnecting until :meth:`stop`)."""
        log.info("connecting to AMQP broker %s:%s", self.settings.host, self.settings.port)
        self._service.startService()

    def when_ready(self) -> Deferred:
        """A Deferred firing with the channel once a connection is ready."""
        channel = self.ready_channel()
        if channel is not None:
            return succeed(channel)
        return self._service.whenConnected().addCallback(lambda _: self.channel)

    def stop(self) -> Deferred:
        """Close the connection and stop reconnecting; fires when disconnected."""
        if not self._service.running:
            return succeed(None)
        return self._service.stopService()

    async def shutdown(self) -> None:
        """Close the AMQP session politely (2 s at most), then :meth:`stop`."""
        client = self.client
        if client is not None and not client.closed:
            try:
                await client.close(within=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        await self.stop()

    def _prepare(self, client: AMQClient) -> Deferred:
        d = Deferred.fromCoroutine(self._handshake(client))
        d.addTimeout(self.settings.connect_timeout, self.clock)

        def failed(failure: Any) -> Any:
            log.warning("AMQP connection to %s:%s not ready: %s", self.settings.host,
                        self.settings.port, failure.getErrorMessage() or failure.type.__name__)
            if client.transport is not None:
                client.transport.abortConnection()
            return failure

        return d.addErrback(failed)

    async def _handshake(self, client: ConsumerClient) -> None:
        await client.authenticate(self.settings.username, self.settings.password)
        channel = await client.channel(1)
        await channel.channel_open()
        result = self.on_ready(client, channel)
        if inspect.isawaitable(result) and not isinstance(result, Deferred):
            result = Deferred.fromCoroutine(result)  # type: ignore[arg-type]
        await maybeDeferred(lambda: result)
        client.fast_deliveries()
        self.client, self.channel = client, channel
        self.connections += 1
        log.info("AMQP connection to %s:%s ready", self.settings.host, self.settings.port)

    def ready_channel(self) -> Any:
        """The channel of the connection that is ready now, or None."""
        client = self.client
        if self.channel is None or client is None or client.closed:
            return None
        return self.channel


class AmqpUnavailable(Exception):
    """No AMQP connection is ready, or the broker did not take a publish."""


class AmqpPublisher:
    """Publishes on one :class:`AmqpConnection`, with the part of Jasmin's ``AmqpFactory``
    our code publishes through: ``publish(exchange, routing_key, content)`` and
    ``connected``. In our launcher, credit lease end markers go through jasmind's own
    factory; the drop-in interceptord, a process of its own, publishes them with this.

    ``on_ready(client, channel)`` declares what it publishes to, after every connection.
    A publish while no connection is ready fails at once (:class:`AmqpUnavailable`): it is
    not kept for later.
    """

    def __init__(self, settings: AmqpSettings, on_ready: OnReady, *,
                 reactor: IReactorTCP | None = None, clock: IReactorTime | None = None):
        self.connection = AmqpConnection(settings, on_ready, reactor=reactor, clock=clock)
        self._started = False

    @property
    def connected(self) -> bool:
        """Whether a publish now would go out."""
        return self.connection.ready_channel() is not None

    def publish(self, exchange: str, routing_key: str, content: Content) -> Deferred:
        """Publish ``content``; fires once written, fails with :class:`AmqpUnavailable`."""
        channel = self.connection.ready_channel()
        if channel is None:
            return fail(AmqpUnavailable("AMQP connection not ready"))
        published = maybeDeferred(channel.basic_publish, exchange=exchange,
                                  routing_key=routing_key, content=content)

        def unavailable(failure: Any) -> Any:
            raise AmqpUnavailable(f"AMQP publish failed: {failure.getErrorMessage()}")

        return published.addErrback(unavailable)

    def start(self) -> None:
        """Connect, and reconnect until :meth:`stop`."""
        if not self._started:
            self._started = True
            self.connection.start()

    def stop(self) -> Deferred:
        """Close the connection politely and stop reconnecting."""
        if not self._started:
            return succeed(None)
        self._started = False
        return Deferred.fromCoroutine(self.connection.shutdown())
