"""``settlement.link: queueing``: settle the SMSC's answers as jasmind publishes them.

Jasmin's SMPP client listeners (``jasmin/managers/listeners.py``) publish every
``submit_sm_resp`` as ``dlr.submit_sm_resp`` and every delivery receipt as
``dlr.deliver_sm`` through jasmind's one ``AmqpFactory`` (``publish(exchange='messaging',
routing_key=..., content=DLR(...))``). :func:`install` replaces ``publish`` on the launcher's
instance (an instance attribute; Jasmin's class is untouched) by :class:`ObservingPublish`,
which calls Jasmin's ``publish`` unchanged and returns its result, then, for those two keys
on ``messaging``, hands the event's ``body`` and ``properties`` to :class:`OutcomeObserver`.
That runs the very :class:`~jasmin_credits.settlement.Settlement` handler the AMQP consumer
runs (``dlr.deliver_sm`` only when ``settlement.dlr_refund`` names stats: otherwise it has
nothing to do), and Jasmin never waits for it. Settlement then consumes neither event from
RabbitMQ (jasmind no longer decodes and acks a copy of each, RabbitMQ no longer stores one);
Jasmin's own DLR daemons still get theirs. An unrelated publish costs one string compare.

Failures never reach Jasmin. With Redis unavailable an event is retried like a link
(:class:`~jasmin_credits.retrying.BackgroundRetry`, bounded by the store's
``pending_outcome_ttl``); given up, it is logged and counted (``outcomes_given_up_total``)
and the sweeper settles the message by ``unanswered_policy`` (a lost receipt refunds
nothing). An event is settled here even when Jasmin could not publish it (RabbitMQ down).

The price is durability, as for links: outcomes are handled in memory, so when jasmind dies
those not yet written (a few milliseconds' worth, or every one waiting through a Redis
outage) are lost, and their messages are settled by the sweeper's ``unanswered_policy``
(``refund`` by default: not charged). ``settlement.link: events`` keeps the durable path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from .amqp import EXCHANGE
from .metrics import NO_METRICS
from .retrying import BackgroundRetry, wrap_method
from .settlement import DELIVER_SM_KEYS, SUBMIT_SM_RESP_KEYS, Handler, Settlement

log = logging.getLogger("jasmin-credits.observing")

SUBMIT_SM_RESP = SUBMIT_SM_RESP_KEYS[0]
DELIVER_SM = DELIVER_SM_KEYS[0]


class OutcomeObserver(BackgroundRetry):
    """Settles ``dlr.submit_sm_resp`` (and, with DLR refunds, ``dlr.deliver_sm``) events
    jasmind publishes, through ``settlement``'s handlers, retrying while Redis is unavailable.

    :meth:`published` starts one event's settlement and returns at once; it never raises.
    ``routing_keys`` are the keys it settles. Retry settings and :meth:`stop` are those of
    :class:`~jasmin_credits.retrying.BackgroundRetry`; ``metrics`` counts retries and
    events given up.
    """

    what = "message outcome"
    log = logging.getLogger("jasmin-credits.observing")

    def __init__(self, settlement: Settlement, *, clock: IReactorTime,
                 metrics: Any = NO_METRICS, **retry: Any):
        super().__init__(clock=clock, on_retry=metrics.outcome_retried,
                         on_give_up=metrics.outcome_given_up, **retry)
        self.settlement = settlement
        self.metrics = metrics
        self.handlers: dict[str, Handler] = {SUBMIT_SM_RESP: settlement.submit_sm_resp}
        if settlement.dlr_refund_stats:
            self.handlers[DELIVER_SM] = settlement.deliver_sm
        self.routing_keys = tuple(self.handlers)

    def published(self, routing_key: str, body: Any, properties: Mapping[str, Any]) -> None:
        """Jasmin published ``body``/``properties`` under ``routing_key``: settle it."""
        handler = self.handlers[routing_key]
        msgid = properties.get("message-id")
        self.run(lambda: handler(body, properties), f"{routing_key} {msgid}",
                 lambda why: self._gave_up(routing_key, body, msgid, why))

    def _gave_up(self, routing_key: str, body: Any, msgid: Any, why: str) -> None:
        if routing_key == SUBMIT_SM_RESP:
            log.error("submit_sm_resp %s for message %s not settled (%s): the sweeper settles "
                      "it by unanswered_policy", body, msgid, why)
        else:
            log.error("delivery receipt %s for %s not applied (%s): no DLR refund", body, msgid,
                      why)


class ObservingPublish:
    """Stands for ``publish`` of jasmind's ``AmqpFactory`` instance.

    Calls Jasmin's ``publish`` and returns its result (or lets its exception through)
    unchanged; then, for a routing key the observer settles on exchange ``messaging``,
    passes the content's ``body`` and ``properties`` to :meth:`OutcomeObserver.published`
    (also when Jasmin's ``publish`` failed: the SMSC answered all the same). Nothing of ours
    is awaited by Jasmin or raised into its path.
    """

    def __init__(self, publish: Callable[..., Any], observer: OutcomeObserver):
        self.publish = publish
        self.observer = observer
        self.routing_keys = observer.routing_keys

    def __call__(self, *args: Any, **kw: Any) -> Any:
        try:
            return self.publish(*args, **kw)
        finally:
            try:
                if (kw.get("routing_key") in self.routing_keys
                        and kw.get("exchange") == EXCHANGE):
                    content = kw["content"]
                    self.observer.published(kw["routing_key"], content.body,
                                            content.properties)
            except Exception:  # noqa: BLE001 - never into Jasmin's path
                self.observer.failed_before_run(
                    "cannot settle a published event: the sweeper settles its message")


def install(amqp_factory: Any, observer: OutcomeObserver) -> ObservingPublish:
    """Wrap ``amqp_factory.publish`` (jasmind's ``AmqpFactory`` instance, shared by every SMPP
    client listener) so the SMSC's answers are settled as Jasmin publishes them."""
    return wrap_method(amqp_factory, "publish", ObservingPublish, observer)


__all__ = ["ObservingPublish", "OutcomeObserver", "install"]
