"""The background services of a running gateway: settlement, the sweeper, card reloads.

Started by :class:`~jasmin_credits.runtime.CreditsRuntime`; each has ``stop()`` returning
a Deferred. None of them blocks start-up: RabbitMQ or Redis being down at start only
delays settlement (Jasmin keeps its events queued in our durable queues meanwhile, under
``settlement.link: events``; under ``queueing`` the gateway retries in memory).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import txredisapi
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed

from .settlement import QueueNames, Settlement, SettlementConsumer, events_consumed
from .sweeper import Sweeper

if TYPE_CHECKING:
    from .runtime import CreditsRuntime

log = logging.getLogger("jasmin-credits")


class _ReloadProtocol(txredisapi.SubscriberProtocol):
    def connectionMade(self) -> Any:  # noqa: N802 - Twisted API
        d = super().connectionMade()
        # (a connection lost before Redis confirms: the factory connects and subscribes again)
        self.subscribe(self.factory.channel).addErrback(
            lambda f: log.info("reload channel not subscribed: %s", f.getErrorMessage()))
        return d

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        self.factory.on_message(str(message))


class ReloadChannelListener:
    """Applies what is announced on the reload channel to this process.

    ``price --reload`` and ``price -a`` on one gateway publish on it; every gateway on the
    same Redis (this one included) re-reads its cards or card assignments. An operator's cut
    of a wallet (``lua/_lib.lua`` ``cut_leases``, from any process) announces ``cut <uid>``:
    this process ends its credit leases on that wallet at once (``runtime.wallet_cut``),
    without waiting for its next check of the lease epochs (which still catches a cut
    announced while it was not listening: pub/sub keeps nothing).
    """

    def __init__(self, runtime: CreditsRuntime):
        self.runtime = runtime
        config = runtime.config.redis
        self.factory = txredisapi.SubscriberFactory()
        self.factory.protocol = _ReloadProtocol
        self.factory.channel = runtime.keys.reload_channel
        self.factory.password = config.password
        self.factory.username = config.username
        self.factory.on_message = self._on_message
        self.factory.continueTrying = True
        self.factory.maxDelay = 10
        if config.tls:
            runtime.reactor.connectSSL(config.host, config.port, self.factory,
                                       ssl.ClientContextFactory(), config.connect_timeout)
        else:
            runtime.reactor.connectTCP(config.host, config.port, self.factory,
                                       config.connect_timeout)

    def _on_message(self, message: str) -> None:
        what, _, sender = message.partition(" ")
        if what == "cut":
            self.runtime.wallet_cut(sender)  # (the uid: a script announced it)
            return
        if sender == self.runtime.instance:
            return  # this process applied it already
        if what == "cards":
            d = Deferred.fromCoroutine(self.runtime.reload_local())
            d.addCallbacks(
                lambda summary: log.info("rate cards reloaded: %s", summary),
                lambda f: log.error("rate card reload refused, the old cards stay: %s",
                                    f.value))
        elif what == "assignments":
            d = Deferred.fromCoroutine(self.runtime.refresh_assignments())
            d.addErrback(lambda f: log.error("card assignments not refreshed: %s", f.value))

    def stop(self) -> Deferred:
        self.factory.continueTrying = False
        self.factory.stopTrying()
        for conn in list(self.factory.pool):
            conn.transport.loseConnection()
        return succeed(None)


def make_settlement(runtime: CreditsRuntime) -> Settlement:
    """The settlement handlers as the config sets them (for the consumer and, under
    ``settlement.link: queueing``, for the gateway's in-process observer)."""
    s = runtime.config.settlement
    return Settlement(runtime.store, dlr_refund_stats=s.dlr_refund,
                      metrics=getattr(runtime, "metrics", None),
                      retry_statuses=s.retry_statuses)


async def start_settlement(runtime: CreditsRuntime) -> list[Any]:
    """Start settlement and the sweeper; return them (to stop).

    Under ``settlement.link: queueing`` the consumer binds nothing (the gateway links and
    settles in process) and only drains queues an earlier configuration left.
    """
    config = runtime.config
    s = config.settlement
    consumer = SettlementConsumer(
        make_settlement(runtime),
        config.amqp,
        queues=QueueNames.with_prefix(s.queue_prefix),
        events=events_consumed(s.link, s.dlr_refund),
        reactor=runtime.reactor,
        clock=runtime.reactor,
        metrics=runtime.metrics,
    )
    consumer.start().addErrback(lambda f: log.error("settlement consumer: %s", f.value))
    sweeper = Sweeper(
        runtime.store, clock=runtime.reactor,
        unqueued_timeout=s.unqueued_timeout, unanswered_timeout=s.unanswered_timeout,
        unanswered_policy=s.unanswered_policy, interval=s.sweep_interval,
    )
    sweeper.start()
    return [consumer, sweeper]


def start_plans_and_events(runtime: CreditsRuntime) -> list[Any]:
    """Start the plan scheduler and the event publisher (as configured); return them."""
    from .events_out import AmqpSink, EventPublisher, WebhookSink
    from .metrics import NO_METRICS
    from .plans import PlanScheduler

    config = runtime.config
    metrics = getattr(runtime, "metrics", None) or NO_METRICS
    services: list[Any] = []
    if config.plans.enabled:
        scheduler = PlanScheduler(runtime.store, runtime.reactor, interval=config.plans.interval,
                                  catch_up=config.plans.catch_up, metrics=metrics)
        scheduler.start()
        services.append(scheduler)
    e = config.events
    sinks: list[Any] = []
    if e.enabled and e.amqp:
        sinks.append(AmqpSink(config.amqp, exchange=e.exchange, reactor=runtime.reactor,
                              clock=runtime.reactor))
    if e.enabled and e.webhook is not None:
        sinks.append(WebhookSink(
            e.webhook, reactor=runtime.reactor, clock=runtime.reactor))
    if sinks:
        publisher = EventPublisher(runtime.store, sinks, clock=runtime.reactor,
                                   interval=e.interval, claim_idle=e.claim_idle,
                                   metrics=metrics)
        publisher.start()
        services.append(publisher)
    return services
