"""jasmind's queues and consumers restored after its AMQP connection comes back.

Jasmin 0.11.1's ``AmqpFactory`` reconnects after the broker restarts (or drops the
connection), but nothing consumes again (upstream issues #1162 and #1234):

- its channel-open callback fires ``channelReady`` a second time and fails
  (``AlreadyCalledError``), after setting ``connected``: jasmind publishes again;
- the queues Jasmin declared once, at start or when a connector was added (``submit.sm.<cid>``,
  ``RouterPB_deliver_sm_all``, ...), are not durable and went with the broker, and their
  consumers went with the connection. jasmind answers ``ESME_ROK`` to messages it never sends,
  receives no MO message, and ``smppccm -1`` fails (no queue), until it is restarted.

:class:`AmqpRecovery` is installed by our launcher on jasmind's factory. On every connection
after the first it declares and consumes again what jasmind's components declared and consumed
at start, with their own methods where they have one: the router's ``deliver.sm.*`` and
billing queues, the in-process DLR lookup and throwers if enabled, and every connector's
``submit.sm.<cid>`` queue (consumed again if the connector is started).

Until all of that is declared again, jasmind stays "not connected" to its own code: its SMPP
server and HTTP API refuse messages (``ESME_RSUBMITFAIL``, as while the broker was down) for
the tens of milliseconds it takes. Publishing earlier would be worse: a message published
before its connector's queue exists is dropped by the broker, and one published before
settlement's queue is bound again would be sent and never charged (settlement learns message
ids from ``submit.sm.*``). (Making publishes wait is no way out: Jasmin's SMPP server takes a
publish that has not completed at once for a failure, and answers ``ESME_RSUBMITFAIL`` for a
message it then sends.) Settlement's queues are declared and bound first: the ones our runtime
declares at start (``event_queues``), or, with no runtime (our launcher without a credits
config, beside the drop-in interceptord), settlement's queues under the default prefix where
they exist (``existing_only``: a passive declaration, so that a gateway without credits never
gains a queue nobody reads). If the restoration fails, the connection is closed so that the
factory tries again.

What Jasmin publishes while disconnected is kept and published once restored, before the
factory says it is connected again (at most :data:`MAX_KEPT`): the SMSC's answers
(``dlr.submit_sm_resp``) and receipts for messages jasmind still had in hand, MO messages.
Jasmin alone logs and drops them; an answer dropped that way leaves its message sent and
settled by ``unanswered_policy`` (a refund by default) instead of charged. (New messages are
not published while disconnected: Jasmin refuses them first.) With ``confirms``, messages,
answers and receipts published on the lost connection that the broker had not confirmed go
first (:mod:`jasmin_credits.amqp_confirms`).

Messages delivered on the old connection may still be in jasmind's hands (waiting for the
SMSC's answer, or for a requeue timer). Acknowledging one on the new channel would name a
delivery tag that channel never gave: the broker closes the channel (the one every message of
jasmind takes), or acknowledges another message. So every delivery is stamped with its
channel, and Jasmin's ``ackMessage``/``rejectMessage`` skip a message from a channel that is
no longer jasmind's: the broker already requeued it, or lost it with its queue. An
acknowledgement refused because the connection is closing is skipped too: Jasmin acknowledges
an SMSC's answer before it publishes it, and would otherwise drop the answer.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from txamqp.client import Closed

from .amqp import EXCHANGE, declare_bound_queue, declare_exchange
from .amqp_confirms import Confirms, republished

log = logging.getLogger("jasmin-credits")

RESTORE_TIMEOUT = 30.0
"""Seconds the broker has to answer all of a restoration's declarations; past that the
connection is closed, and jasmind's factory reconnects and restores again."""

FIRST_PROBE_CHANNEL = 1000
"""Channel ids for passive declarations (one each: a missing queue closes its channel), far
from jasmind's channel 1 and the marker route's ids from 2."""

PROBE_CHANNELS = (1100, 2000)
"""Channel ids (a range, used in turn) for finding out whether a connector's queue can be
declared durable; below RabbitMQ's default ``channel_max`` (2047)."""

EventQueues = Sequence[tuple[str, Iterable[str]]]
"""Settlement's queues and the routing keys each is bound to on ``messaging``."""


MAX_KEPT = 10_000
"""Publications kept while disconnected; later ones are dropped (and counted in the log),
as Jasmin drops them all."""

STAMP = "jasmin_credits_channel"
"""Where a delivered txAMQP ``Message`` keeps the channel it came on (its ``__dict__``:
``Message.__setattr__`` only takes the method's fields)."""


def _was_connected(factory: Any) -> bool:
    """Whether ``factory`` has had a connection (jasmind's start fired ``channelReady``) and
    is not being stopped (``disconnect`` sets it to False)."""
    ready = factory.channelReady
    return isinstance(ready, Deferred) and ready.called


def _connectors(manager: Any) -> list[dict[str, Any]]:
    return list(getattr(manager, "connectors", None) or [])


async def _maybe(result: Any) -> Any:
    """Await ``result`` if Jasmin returned a Deferred (``named_queue_declare`` answers None
    for a queue already declared on this connection)."""
    if isinstance(result, Deferred):
        return await result
    return result


class AmqpRecovery:
    """Restores jasmind's queues and consumers on ``factory`` (jasmind's ``AmqpFactory``) at
    each reconnection; ``components`` is jasmind's component map (read at that time, so the
    components started after the factory are included)."""

    def __init__(self, factory: Any, components: Mapping[str, Any], clock: IReactorTime, *,
                 event_queues: EventQueues = (), existing_only: bool = False,
                 confirms: bool = False, timeout: float = RESTORE_TIMEOUT):
        self.factory = factory
        self.components = components
        self.clock = clock
        self.event_queues = event_queues
        self.existing_only = existing_only
        self.timeout = timeout
        self.restored = 0
        """Restorations that completed (for tests and logs)."""
        self.kept: list[dict[str, Any]] = []
        """What Jasmin published while disconnected, in order (``publish``'s arguments),
        after the answers and receipts its last connection did not confirm."""
        self.dropped = 0
        self.use_confirms = confirms
        self.confirms: Confirms | None = None
        """Publisher confirms on the current channel (:mod:`jasmin_credits.amqp_confirms`),
        if ``confirms``."""
        self._restoring: set[Any] = set()
        """The connections (txAMQP clients) a restoration is declaring on."""
        self._probe_channels = itertools.cycle(range(*PROBE_CHANNELS))

    def install(self) -> None:
        """Take over the factory's channel-open callback and stamp its deliveries.

        Before the factory's first delivery: txAMQP's delegate caches a handler per method
        the first time it dispatches one."""
        factory = self.factory
        first_open = factory._channel_open

        def channel_open(arg: Any) -> Any:
            self._confirm()
            if not _was_connected(factory):
                return first_open(arg)  # jasmind's start waits for this one
            self.restore()  # (``connected`` once restored)
            return None

        factory._channel_open = channel_open
        factory.named_queue_declare = self._named_queue_declare
        # (before our runtime's wrappers of ``publish``, which then see every call at once)
        factory.publish = self.publish = self._keeping(factory.publish)
        delegate = factory.delegate
        delegate.basic_deliver = _stamping(delegate.basic_deliver)
        delegate.handlers.clear()
        guard_acknowledgements()

    def _keeping(self, publish: Callable[..., Any]) -> Callable[..., Any]:
        """``publish``, keeping what it is given while the factory is not connected, and
        marking settlement's events persistent (:func:`persistent`)."""
        factory = self.factory

        def keeping_publish(**args: Any) -> Any:
            persistent(args)
            if factory.connected or not _was_connected(factory):
                return publish(**args)  # (or never connected yet, or stopping: dropped)
            if len(self.kept) < MAX_KEPT:
                self.kept.append(args)
            else:
                self.dropped += 1
            return None  # (what Jasmin's publish answers when not connected)

        return keeping_publish

    def _named_queue_declare(self, *args: Any, **keys: Any) -> Deferred | None:
        """Jasmin's ``AmqpFactory.named_queue_declare`` (once per queue and connection,
        refused while not connected), also while a restoration declares, and declaring the
        connectors' queues durable (:meth:`_declare_connector_queue`)."""
        factory, queue = self.factory, keys["queue"]
        if not factory.connected and factory.client not in self._restoring:
            factory.log.error("AMQP Client is not connected, cannot queue_declare")
            return None
        if queue in factory.queues:
            return None
        if is_connector_queue(queue) and not args and keys.keys() == {"queue"}:
            return Deferred.fromCoroutine(self._declare_connector_queue(queue))
        return factory.chan.queue_declare(*args, **keys).addCallback(factory._queue_declared)

    async def _declare_connector_queue(self, queue: str) -> Any:
        """``submit.sm.<cid>`` declared durable, so that the messages jasmind accepted and
        queued for its connector (``delivery-mode`` 2: :func:`persistent`) survive a broker
        restart; Jasmin declares it transient, and a restart lost them all, told
        ``ESME_ROK`` and never sent.

        A transient queue of that name already there (declared before this version, and kept
        until the broker restarts or the connector is removed) stays as it is: declaring it
        durable would make the broker close jasmind's channel. A channel of its own finds
        out first."""
        factory = self.factory
        client = factory.client
        number = next(self._probe_channels)
        channel = await client.channel(number)
        try:
            await channel.channel_open()
            await channel.queue_declare(queue=queue, durable=True)
            await channel.channel_close()
            durable = True
        except Closed:  # (a transient one exists: the broker closed this channel)
            log.warning("RabbitMQ queue %s is transient (declared before jasmin-credits made "
                        "it durable): what it holds is lost if the broker restarts, until it "
                        "is declared again after one", queue)
            durable = False
        finally:  # (txAMQP keeps a channel by its number: the next probe opens a new one)
            client.channels.pop(number, None)
        declared = await factory.chan.queue_declare(queue=queue, durable=durable)
        factory._queue_declared(declared)
        return declared

    def _confirm(self) -> None:
        """Confirm mode on the factory's new channel, before anything is published on it;
        what the previous channel did not confirm is published first once restored."""
        if not self.use_confirms:
            return
        if self.confirms is not None:
            self.kept[:0] = self.confirms.unconfirmed()
        self.confirms = Confirms(self.factory.client, self.factory.chan, self.clock,
                                 self.publish)
        self.confirms.select()

    async def _publish_kept(self) -> int:
        """Publish what was kept on the restored channel, in order (Jasmin's ``publish``
        itself refuses until ``connected``); answer how many."""
        published = 0
        try:  # (what is kept meanwhile is published too: the loop reaches it)
            for args in self.kept:
                await self.factory.chan.basic_publish(**args)
                published += 1
        finally:  # (if cut short, the rest waits for the next restoration)
            del self.kept[:published]
        if self.dropped:
            log.warning("%d publications made while disconnected from RabbitMQ were dropped "
                        "(at most %d are kept)", self.dropped, MAX_KEPT)
            self.dropped = 0
        return published

    def restore(self) -> Deferred:
        """Declare and consume again on the factory's current connection (in the background:
        failures are logged, and close the connection so that the factory tries again)."""
        client = self.factory.client
        log.warning("reconnected to RabbitMQ: declaring Jasmin's queues and consuming "
                    "from them again")
        restoring = Deferred.fromCoroutine(self._restore(client))
        restoring.addTimeout(self.timeout, self.clock)
        return restoring.addCallbacks(self._restored, self._failed, errbackArgs=(client,))

    def _restored(self, names: list[str]) -> None:
        self.restored += 1
        log.info("Jasmin's AMQP consumers are back: %s", ", ".join(names) or "none")

    def _failed(self, failure: Any, client: Any) -> None:
        log.error("restoring Jasmin's AMQP queues failed (%s): closing the connection, "
                  "to reconnect and try again", failure.getErrorMessage())
        transport = getattr(client, "transport", None)
        if client is self.factory.client and transport is not None:
            transport.loseConnection()

    async def _restore(self, client: Any) -> list[str]:
        """Settlement's queues, then what jasmind's start declared, in its order: the
        router's queues, the in-process DLR lookup and throwers, then the connectors (their
        ``basic_qos`` applies to consumers created after it on the channel)."""
        factory = self.factory
        # Jasmin's components declare through ``named_queue_declare``, which refuses while
        # not connected: ours (:meth:`_named_queue_declare`) lets this restoration declare.
        self._restoring.add(client)
        try:
            names = await self._components(client)
            kept = await self._publish_kept()
            if kept:
                names.append(f"{kept} publications kept while disconnected, published")
        finally:
            self._restoring.discard(client)
        if client is factory.client:
            factory.connected = True
        return names

    async def _components(self, client: Any) -> list[str]:
        names = await self._event_queues(client)
        router = self.components.get("router-pb-factory")
        if router is not None:
            await router.addAmqpBroker(self.factory)
            names.append("router")
        lookup = self.components.get("dlrlookup")
        if lookup is not None:
            lookup.q = None  # (its setup_callbacks keeps the first queue it is given)
            await lookup.subscribe()
            names.append("dlr lookup")
        for name in ("deliversm-thrower", "dlr-thrower"):
            thrower = self.components.get(name)
            if thrower is not None:
                await thrower.addAmqpBroker(self.factory)
                names.append(name)
        connectors = _connectors(self.components.get("smppcm-pb-factory"))
        if connectors:
            await self.factory.chan.basic_qos(prefetch_count=1)
        for connector in connectors:
            await self._connector(connector)
            names.append(f"connector {connector['id']}")
        return names

    async def _event_queues(self, client: Any) -> list[str]:
        """Declare and bind settlement's queues (only those that exist, if
        ``existing_only``); answer the names bound."""
        if not self.existing_only:
            for queue, keys in self.event_queues:
                await declare_bound_queue(self.factory.chan, queue, keys)
            return [queue for queue, _ in self.event_queues]
        bound = []
        for number, (queue, keys) in enumerate(self.event_queues, FIRST_PROBE_CHANNEL):
            channel = await client.channel(number)
            await channel.channel_open()
            try:
                await channel.queue_declare(queue=queue, passive=True)
            except Closed:  # (no such queue: the broker closed this channel)
                continue
            await declare_exchange(channel)
            for key in keys:
                await channel.queue_bind(queue=queue, exchange=EXCHANGE, routing_key=key)
            await channel.channel_close()
            bound.append(queue)
        return bound

    async def _connector(self, connector: dict[str, Any]) -> None:
        """``perspective_connector_add``'s declaration and, for a started connector,
        ``perspective_connector_start``'s consumer (without restarting its SMPP session)."""
        factory, chan = self.factory, self.factory.chan
        queue = f"submit.sm.{connector['id']}"
        await declare_exchange(chan)
        await _maybe(self._named_queue_declare(queue=queue))
        await chan.queue_bind(queue=queue, exchange=EXCHANGE, routing_key=queue)
        tag = connector.get("consumer_tag")
        if tag is None:  # stopped: messages wait in the queue, as after connector_add
            return
        await chan.basic_consume(queue=queue, no_ack=False, consumer_tag=tag)
        submit_sm_q = await factory.client.queue(tag)
        listener = connector["sm_listener"]
        listener.setSubmitSmQ(submit_sm_q)
        connector["submit_sm_q"] = submit_sm_q
        submit_sm_q.get().addCallback(listener.submit_sm_callback).addErrback(
            listener.submit_sm_errback)


def is_connector_queue(name: str) -> bool:
    """Whether ``name`` is a connector's queue, ``submit.sm.<cid>`` (not Jasmin's
    ``submit.sm.resp.<cid>``)."""
    return name.startswith("submit.sm.") and not name.startswith("submit.sm.resp.")


def persistent(args: dict[str, Any]) -> None:
    """Mark a publication settlement reads (``submit.sm.<cid>``, ``dlr.*``) persistent.

    Jasmin publishes everything transient. In settlement's durable queues a transient message
    does not survive a broker restart: an SMSC's answer settled had not read yet was lost, and
    its message settled by ``unanswered_policy`` (a refund by default) instead of charged.
    Jasmin's own queues are not durable, so the mark changes nothing there."""
    key = args.get("routing_key", "")
    if republished(key):  # (the same publications: what settlement and connectors read)
        content = args.get("content")
        properties = getattr(content, "properties", None)
        if properties is not None:
            properties["delivery-mode"] = 2


def _stamping(deliver: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def basic_deliver(channel: Any, message: Any) -> Any:
        message.__dict__[STAMP] = channel
        return deliver(channel, message)

    return basic_deliver


def _skipping_stale(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (an ``ackMessage`` or ``rejectMessage(message, ...)`` of a Jasmin class
    with ``amqpBroker``), skipping a message delivered on a channel no longer the broker's."""

    @functools.wraps(method)
    def acknowledge(self: Any, *args: Any, **kwargs: Any) -> Any:
        message = kwargs["message"] if "message" in kwargs else args[0]
        channel = getattr(message, "__dict__", {}).get(STAMP)
        if channel is not None and channel is not self.amqpBroker.chan:
            log.info("not acknowledging a message delivered before the reconnection to "
                     "RabbitMQ (%s): the broker requeued it or lost it with its queue",
                     method.__name__)
            return defer.succeed(None)
        return defer.maybeDeferred(method, self, *args, **kwargs).addErrback(
            _channel_gone, method.__name__)

    acknowledge.jasmin_credits_guarded = True
    return acknowledge


def _channel_gone(failure: Any, name: str) -> None:
    """An acknowledgement the closing connection refused: nothing to acknowledge any more
    (the broker requeues the message, or loses it with its queue). Raising it would make
    Jasmin's ``submit_sm_resp_event`` skip what follows the ack: publishing the SMSC's
    answer (which is then kept until the connection is back)."""
    failure.trap(Closed)
    log.info("%s on a closed AMQP channel skipped: the broker requeued the message or lost "
             "it with its queue", name)


def _acknowledging_classes() -> list[type]:
    """Every Jasmin class that acknowledges deliveries on jasmind's factory."""
    from jasmin.managers.dlr import DLRLookup
    from jasmin.managers.listeners import SMPPClientSMListener
    from jasmin.routing.router import RouterPB
    from jasmin.routing.throwers import Thrower

    return [SMPPClientSMListener, RouterPB, Thrower, DLRLookup]


def guard_acknowledgements(classes: list[type] | None = None) -> None:
    """Make ``ackMessage``/``rejectMessage`` of ``classes`` (Jasmin's by default) skip
    stale deliveries; a second call changes nothing."""
    for cls in _acknowledging_classes() if classes is None else classes:
        for name in ("ackMessage", "rejectMessage"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "jasmin_credits_guarded", False):
                setattr(cls, name, _skipping_stale(method))


__all__ = ["AmqpRecovery", "guard_acknowledgements"]
