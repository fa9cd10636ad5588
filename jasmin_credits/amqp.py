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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from txamqp.client import TwistedDelegate
from txamqp.protocol import AMQClient
from txamqp.spec import load as load_spec

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

    def buildProtocol(self, addr: Any) -> AMQClient:  # noqa: N802 - IProtocolFactory
        return AMQClient(TwistedDelegate(), self.settings.vhost, self.spec,
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
        if self.channel is not None and self.client is not None and not self.client.closed:
            return succeed(self.channel)
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

    async def _handshake(self, client: AMQClient) -> None:
        await client.authenticate(self.settings.username, self.settings.password)
        channel = await client.channel(1)
        await channel.channel_open()
        result = self.on_ready(client, channel)
        if inspect.isawaitable(result) and not isinstance(result, Deferred):
            result = Deferred.fromCoroutine(result)  # type: ignore[arg-type]
        await maybeDeferred(lambda: result)
        self.client, self.channel = client, channel
        self.connections += 1
        log.info("AMQP connection to %s:%s ready", self.settings.host, self.settings.port)
