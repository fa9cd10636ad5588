"""A route for credit lease end markers on jasmind's AMQP factory, after every connection.

Our launcher publishes a lease's end marker on jasmind's own channel, behind the messages
held on the lease (:mod:`jasmin_credits.leasing`). Jasmin declares ``messaging`` non-durable
and declares it, its queues and their bindings once, at start. So after a RabbitMQ restart
jasmind's factory reconnects to a broker where:

- the exchange may not exist: publishing to it makes the broker close the channel, the one
  every message of jasmind takes;
- settlement's durable ``submit_sm`` queue survived, but not its binding (a binding goes with
  its exchange): until settlement's consumer reconnects and binds it again, a marker is routed
  nowhere and dropped without a word (markers are published without ``mandatory``). The
  lease's unused credit then stays reserved until the sweeper's deadline.

:class:`MarkerRoute` is the lease book's ``ready()`` there: it answers True only once the
exchange, settlement's queue and its binding were declared on the connection jasmind's
factory has now. It declares them, once per connection, on a channel of its own (a failed
declaration closes that channel, not jasmind's). The drop-in interceptord publishes on a
connection of its own, which declares the same things whenever it connects
(:func:`~jasmin_credits.settlement.declare_marker_route`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

log = logging.getLogger("jasmin-credits")

FIRST_CHANNEL = 2
"""jasmind's factory uses channel 1; on one connection, each declaration attempt takes the
next id (txAMQP keeps a channel the broker closed under its id)."""

DECLARE_TIMEOUT = 10.0
"""Seconds the broker has to answer one declaration attempt."""

RETRY_DELAY = 5.0
"""Seconds between declaration attempts on one connection after one failed (the broker
refused it, e.g. no configure permission): each takes a channel id."""


class MarkerRoute:
    """Whether ``factory`` (jasmind's ``AmqpFactory``: ``connected``, ``client``) can publish
    a marker that reaches settlement's queue; ``declare(channel)`` declares the route."""

    def __init__(self, factory: Any, declare: Callable[[Any], Awaitable[Any]],
                 clock: IReactorTime):
        self.factory = factory
        self.declare = declare
        self.clock = clock
        self._retry_at = 0.0
        self._routed: Any = None
        """The client (one per connection) the route was declared on."""
        self._declaring: Any = None
        self._channels_of: Any = None
        self._next_channel = FIRST_CHANNEL
        """The next channel id for a declaration on the client ``_channels_of``."""

    def ready(self) -> bool:
        """True once the route is declared on the factory's current connection; otherwise
        False, and the declaration starts (in the background) unless one is under way or
        failed less than :data:`RETRY_DELAY` ago."""
        client = self.factory.client if getattr(self.factory, "connected", False) else None
        if client is None:
            return False
        if client is self._routed:
            return True
        if client is not self._declaring:
            if client is not self._channels_of:  # (a new connection)
                self._channels_of, self._next_channel = client, FIRST_CHANNEL
                self._retry_at = 0.0
            elif self.clock.seconds() < self._retry_at:
                return False
            self._declaring = client
            declaring = Deferred.fromCoroutine(self._declare_on(client))
            # (a broker that never answers: cancelled, then tried again like a refusal)
            declaring.addTimeout(DECLARE_TIMEOUT, self.clock).addErrback(
                lambda f: log.error("declaring the lease marker route failed: %s",
                                    f.getTraceback()))
        return client is self._routed  # (the declaration may have been answered at once)

    async def _declare_on(self, client: Any) -> None:
        channel_id, self._next_channel = self._next_channel, self._next_channel + 1
        try:
            channel = await client.channel(channel_id)
            await channel.channel_open()
            await self.declare(channel)
            await channel.channel_close()
        except Exception as error:  # noqa: BLE001 - asked again RETRY_DELAY later
            first = channel_id == FIRST_CHANNEL
            log.log(logging.WARNING if first else logging.INFO,
                    "cannot declare settlement's queue for credit lease end markers (%s): "
                    "they wait, and it is tried again every %g s", error, RETRY_DELAY)
            if self._declaring is client:
                self._declaring = None
                self._retry_at = self.clock.seconds() + RETRY_DELAY
            return
        if self._declaring is client:
            self._routed = client


__all__ = ["MarkerRoute"]
