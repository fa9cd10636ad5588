"""The running credit system of one gateway process: everything wired in one place.

Built from the YAML config by :meth:`CreditsRuntime.from_config_file`, started by our
jasmind launcher or our interceptord. It owns the Redis pool, the rate cards, the
charger, the settlement consumer and the sweeper, and gives jCli and the HTTP API what
they need.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread

from .charging import Charger
from .config import CreditsConfig, load_config
from .errors import ConfigError, Refusal, StoreUnavailable
from .interceptors.inprocess import InProcessInterceptor
from .keys import Keys
from .metrics import CreditMetrics
from .pricing import Pricer, Quote
from .ratecard import RateCard, load_card
from .reconcile import Journal, Reconciler
from .redis_client import connection_pool
from .store import CreditStore

log = logging.getLogger("jasmin-credits")

DROP_IN_END_DELAY = 5.0
"""Seconds between a lease's last hold and its end marker in the drop-in interceptord: far
more than jasmind takes to queue a message it was answered for, even when busy."""


def load_cards(config: CreditsConfig) -> dict[str, RateCard]:
    """Read every card file of the config; a broken file raises ConfigError."""
    cards: dict[str, RateCard] = {}
    for path in config.cards.files:
        card = load_card(path, config.decimals)
        if card.name in cards:
            raise ConfigError(str(path), "name", f"card name {card.name!r} is used twice")
        cards[card.name] = card
    return cards


class CreditsRuntime:
    """One gateway's credit system. ``reactor`` is the only global it needs, passed in."""

    def __init__(self, config: CreditsConfig, *, reactor: IReactorTime | None = None,
                 redis: Any = None, role: str = "gateway"):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.role = role
        """``gateway`` (charges; jasmind or interceptord) or ``background`` (settled)."""
        self.keys = Keys(config.redis.key_prefix)
        self.instance = uuid.uuid4().hex
        """Names this process in reload announcements (it ignores its own)."""
        self.cards = load_cards(config)
        self._assignments: dict[str, dict[str, str]] = {"user": {}, "group": {}}
        self.pricer = self._make_pricer(self.cards)
        self.redis = redis
        self.store: CreditStore | None = None
        self.charger: Charger | None = None
        self.services: list[Any] = []
        self.tag_headers: Any = None
        """jasmind's tag-header wrappers (:meth:`install_client_manager`), if installed."""
        self.metrics = CreditMetrics(config.decimals)
        self.lock_file: str | None = None
        """The launcher's ``--lock-file``: with the host name, it names this gateway's credit
        leases unless ``charging.lease.gateway`` does (:func:`default_gateway_name`)."""
        if redis is not None:
            self._wire(redis)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_config_file(cls, path: str | Path | None, role: str = "gateway") -> CreditsRuntime:
        """Load and validate the config and its cards; raises ConfigError."""
        return cls(load_config(path), role=role)

    @property
    def in_process(self) -> bool:
        return self.config.charge_in_process

    @property
    def decimals(self) -> int:
        return self.config.decimals

    @property
    def display_decimals(self) -> int | None:
        return self.config.display_decimals

    @property
    def timezone(self):
        return self.config.store.timezone

    def _make_pricer(self, cards: dict[str, RateCard]) -> Pricer:
        users = {**self.config.cards.users, **self._assignments["user"]}
        groups = {**self.config.cards.groups, **self._assignments["group"]}
        return Pricer(cards, self.config.cards.default, users, groups,
                      source=self.config.source)

    def _wire(self, redis: Any) -> None:
        self.redis = redis
        self.store = CreditStore(redis, clock=self.reactor, reactor=self.reactor,
                                 keys=self.keys, settings=self.config.store)
        self.reconciler = None
        if self.config.on_store_error == "pass":
            self.reconciler = Reconciler(self.store, Journal(self.config.unrecorded_journal),
                                         clock=self.reactor)
        self.charger = Charger(
            self.store, lambda: self.pricer,
            missing_wallet=self.config.missing_wallet,
            on_store_error=self.config.on_store_error,
            on_unrecorded=self.reconciler.record if self.reconciler else None,
            metrics=self.metrics,
        )
        self.metrics.watch_store(self.store)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Deferred:
        """Connect to Redis, load card assignments, start settlement and the sweeper."""
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        if self.redis is None:
            r = self.config.redis
            self._wire(connection_pool(
                self.reactor, r.host, r.port, db=r.db, poolsize=r.poolsize,
                password=r.password, username=r.username, tls=r.tls,
                connect_timeout=r.connect_timeout,
            ))
        try:
            await self.refresh_assignments()
        except StoreUnavailable as error:
            # Start anyway: charging fails closed (or open) until Redis answers.
            log.error("credit store unavailable at start: %s", error)
        from .services import ReloadChannelListener, start_plans_and_events, start_settlement

        if self.role == "gateway" and self.config.settlement.enabled:
            # Before Jasmin takes traffic: its events only reach queues that exist.
            from .settlement import declare_queues

            queues, events = self._event_queue_names()
            await declare_queues(self.config.amqp, queues, events=events,
                                 reactor=self.reactor, clock=self.reactor)

        self.services = [ReloadChannelListener(self)]
        if self.reconciler is not None:
            self.reconciler.start()
            self.services.append(self.reconciler)
        if self.runs_background:
            if self.config.settlement.enabled:
                self.services += await start_settlement(self)
            self.services += start_plans_and_events(self)
        elif self.role == "gateway" and self.config.settlement.process == "child":
            from .settled_child import SettledChild

            child = SettledChild(self.reactor, self.config.source, metrics=self.metrics,
                                 nice=self.config.settlement.nice)
            child.start()
            self.services.append(child)

    @property
    def runs_background(self) -> bool:
        """Whether this process runs settlement, the sweeper, plans and event delivery.

        A gateway does unless ``settlement.process`` moves them to ``jasmin-credits-settled``
        (``child``: started by the gateway itself; ``separate``: run by the operator); then
        jasmind's reactor only charges.
        """
        return self.role == "background" or self.config.settlement.process == "gateway"

    def stop(self) -> Deferred:
        """Stop settlement and the sweeper, close Redis."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %r failed", service)
        self.services = []
        if self.redis is not None and hasattr(self.redis, "disconnect"):
            await self.redis.disconnect()

    def wallet_cut(self, uid: str) -> Deferred:
        """An operator subtracted from, reconfigured or tried to remove the wallet of ``uid``
        (through this process's jCli, or anywhere: the cut is announced on the reload
        channel, :class:`~jasmin_credits.services.ReloadChannelListener`): this process's
        credit leases on it end at once. The wallet's raised lease epoch ends them at the
        next check (every second) where the announcement was missed.

        Fires once their unused credit and messages are back in the wallet
        (:meth:`~jasmin_credits.leasing.LeaseBook.end_wallet`): jCli answers after that, so
        the next message is judged on the new limits and real usage only. Never fails."""
        leases = getattr(self.charger, "leases", None)
        if leases is not None:
            return leases.end_wallet(uid)
        return succeed(None)

    # -- Jasmin seams -------------------------------------------------------------------

    def make_interceptor_client(self) -> InProcessInterceptor:
        """The in-process replacement of Jasmin's interceptor PB client."""
        if self.charger is None:
            raise RuntimeError("start() the runtime before building the interceptor client")
        return InProcessInterceptor(self.charger, self.config)

    def install_client_manager(self, client_manager: Any) -> Any:
        """With ``settlement.link: queueing``, link each hold as Jasmin queues its message;
        with ``events``, repeat each message's tag in its ``submit.sm.*`` headers
        (:mod:`jasmin_credits.tagheaders`, kept as ``tag_headers``).

        ``client_manager`` is jasmind's ``SMPPClientManagerPB`` (its ``perspective_submit_sm``
        is wrapped, see :mod:`jasmin_credits.linking`). Answers the linker (stopped with the
        runtime), or None when links come from ``submit.sm.*`` events or settlement is
        disabled (``settlement.enabled: false``: this process settles nothing).
        """
        s = self.config.settlement
        if s.link == "events" and self.in_process:
            # Whichever process settles reads the tag from the message's headers.
            from .tagheaders import install as install_tag_headers

            self.tag_headers = install_tag_headers(client_manager)
            if self.config.lease.messages:
                from .marker_route import MarkerRoute

                broker = client_manager.amqpBroker
                route = MarkerRoute(broker, self._declare_marker_route, self.reactor)
                self._start_leases(broker, route.ready)
        if s.link != "queueing" or not self.in_process or not s.enabled:
            return None
        if self.store is None:
            raise RuntimeError("start() the runtime before installing the linker")
        from .linking import QueueingLinker, install

        linker = QueueingLinker(
            self.store, clock=self.reactor, metrics=self.metrics,
            give_up_after=self.config.store.pending_outcome_ttl.total_seconds())
        install(client_manager, linker)
        self.services.append(linker)
        return linker

    def start_drop_in_leases(self) -> None:
        """Credit leases in the drop-in interceptord (``charging.mode: interceptor-pb``),
        their end markers published on a connection of its own (``amqp``).

        jasmind queues a message a few milliseconds after the interceptord answers, on
        another connection, so a lease's marker waits :data:`DROP_IN_END_DELAY` after the
        lease's last hold (our launcher's jasmind: 1 s, on the very channel its messages
        take). A message queued after its lease's marker all the same is held from the
        wallet (``late_hold``): charged once either way."""
        if not self.config.lease.messages:
            return
        from .amqp import AmqpPublisher

        publisher = AmqpPublisher(
            self.config.amqp, lambda client, channel: self._declare_marker_route(channel),
            reactor=self.reactor)
        publisher.start()
        self.services.append(publisher)  # (stopped after the book: its stop publishes)
        # on stop, a second for what jasmind was answered just before
        self._start_leases(publisher, lambda: publisher.connected,
                           end_delay=DROP_IN_END_DELAY, stop_delay=1.0)

    def _event_queue_names(self) -> tuple[Any, frozenset[str]]:
        from .settlement import QueueNames, events_consumed

        s = self.config.settlement
        return QueueNames.with_prefix(s.queue_prefix), events_consumed(s.link, s.dlr_refund)

    def event_queues(self) -> list[tuple[str, tuple[str, ...]]]:
        """Settlement's queues (and routing keys) Jasmin's events must reach: the ones
        :meth:`start` declares before Jasmin takes traffic, and our launcher's jasmind
        declares again after each reconnection to RabbitMQ before it publishes anything
        (:mod:`jasmin_credits.amqp_recovery`); none if this process declares none."""
        if self.role != "gateway" or not self.config.settlement.enabled:
            return []
        from .settlement import bindings

        queues, events = self._event_queue_names()
        return bindings(queues, events)

    def _declare_marker_route(self, channel: Any) -> Awaitable[None]:
        from .settlement import QueueNames, declare_marker_route

        return declare_marker_route(
            channel, QueueNames.with_prefix(self.config.settlement.queue_prefix))

    def _start_leases(self, amqp_broker: Any, ready: Callable[[], bool],
                      end_delay: float = 1.0, stop_delay: float = 0.0) -> None:
        """Credit leases (``charging.lease``), their end markers published by ``amqp_broker``
        (jasmind's AMQP factory, on the channel its ``submit.sm.*`` messages take, or an
        :class:`~jasmin_credits.amqp.AmqpPublisher`) while ``ready()`` (connected, with
        settlement's queue bound: :mod:`jasmin_credits.marker_route`), ``end_delay`` after a
        lease's last hold."""
        if self.store is None or self.charger is None:
            raise RuntimeError("start() the runtime before installing credit leases")
        from .amqp import AmqpUnavailable
        from .leasing import LeaseBook, default_gateway_name
        from .settlement import lease_end_marker

        def publish_end(uid: str, lease_id: str) -> Any:
            # Jasmin's AmqpFactory.publish only logs when it is not connected: say it failed
            # (the book publishes the marker again once it is)
            if not ready():
                raise AmqpUnavailable("AMQP connection not ready, or settlement's queue not "
                                      "yet bound on it")
            return amqp_broker.publish(**lease_end_marker(uid, lease_id))

        lease = self.config.lease
        book = LeaseBook(
            self.store, self.reactor, publish_end,
            messages=lease.messages, seconds=lease.seconds, idle=lease.idle,
            grace=self.config.settlement.unqueued_timeout, end_delay=end_delay,
            stop_delay=stop_delay,
            gateway=lease.gateway or default_gateway_name(self.lock_file),
            ready=ready, metrics=self.metrics)
        self.metrics.watch_leases(book)
        book.start()
        self.charger.leases = book
        self.services.append(book)
        # leases are on by default: say so, and how to turn them off
        log.info("Credit leases: %d messages, %g s, gateway name %r "
                 "(charging.lease; messages: 0 turns them off)",
                 lease.messages, lease.seconds, book.gateway)

    def install_amqp_broker(self, amqp_factory: Any) -> Any:
        """With ``settlement.link: queueing``, settle the SMSC's answers as jasmind publishes
        them.

        ``amqp_factory`` is jasmind's ``AmqpFactory`` (its ``publish`` is wrapped, see
        :mod:`jasmin_credits.observing`): ``dlr.submit_sm_resp`` always, ``dlr.deliver_sm``
        when ``settlement.dlr_refund`` names stats. Answers the observer (stopped with the
        runtime), or None when settlement reads those events from RabbitMQ (``events``) or
        is disabled.
        """
        s = self.config.settlement
        if s.link != "queueing" or not self.in_process or not s.enabled:
            return None
        if self.store is None:
            raise RuntimeError("start() the runtime before installing the observer")
        from .observing import OutcomeObserver, install
        from .services import make_settlement

        observer = OutcomeObserver(
            make_settlement(self), clock=self.reactor, metrics=self.metrics,
            give_up_after=self.config.store.pending_outcome_ttl.total_seconds())
        install(amqp_factory, observer)
        self.services.append(observer)
        return observer

    def install_router(self, router_pb: Any) -> None:
        """Give messages no interceptor matches a pass-through one (``ensure_interceptor``)."""
        if self.config.ensure_interceptor:
            from .interceptors.ensure import ensure_mt_interceptor

            ensure_mt_interceptor(router_pb)

    def install_jcli(self, jcli_factory: Any) -> None:
        """Add the ``credit`` and ``price`` commands to Jasmin's jCli."""
        from .jcli import install_jcli

        install_jcli(jcli_factory, self)

    def install_http(self, http_api: Any) -> None:
        """Add ``/credit`` and ``/metrics``; ``/rate`` quotes our price and charges nothing;
        ``/send`` refusals name their reason."""
        from .http_credit import install_http
        from .http_rate import install_rate
        from .http_send import install_send
        from .metrics import install_metrics

        resource = getattr(http_api, "resource", http_api)
        rate = getattr(resource, "children", {}).get(b"rate")
        client = getattr(rate, "interceptorpb_client", None)
        if isinstance(client, InProcessInterceptor):
            rate.interceptorpb_client = client.without_charging()
        install_http(http_api, self)
        install_metrics(http_api, self.metrics, self.reactor)
        install_rate(http_api, self)
        install_send(http_api, self.config)

    # -- cards --------------------------------------------------------------------------

    async def refresh_assignments(self) -> None:
        """Re-read card assignments made from jCli (stored in Redis)."""
        assignments: dict[str, dict[str, str]] = {"user": {}, "group": {}}
        for field, card in (await self.store.card_assignments()).items():
            kind, _, ident = str(field).partition(":")
            if card in self.cards and kind in ("u", "g"):
                assignments["user" if kind == "u" else "group"][ident] = card
        self._assignments = assignments
        self.pricer = self._make_pricer(self.cards)

    async def reload_cards(self) -> str:
        """Re-read the card files here, then tell every other gateway to do the same.

        A broken file raises ConfigError and the cards in force stay.
        """
        summary = await self.reload_local()
        await self.store.announce_reload(f"cards {self.instance}")
        return summary

    async def reload_local(self) -> str:
        """Re-read the card files in a thread (a 50,000-prefix card takes seconds to parse:
        the reactor must not wait), then swap the cards in one assignment."""
        cards = await deferToThread(load_cards, self.config)
        self.cards, self.pricer = cards, self._make_pricer(cards)
        return ", ".join(f"{c.name} ({len(c.entries)} entries)" for c in cards.values())

    async def assign_card(self, kind: str, ident: str, card: str | None) -> None:
        """Assign ``card`` to a user or group (``None`` removes), persisted in Redis."""
        if kind not in ("user", "group"):
            raise ValueError("assign a card to a 'user' or a 'group'")
        if card is not None and card not in self.cards:
            known = ", ".join(sorted(self.cards)) or "none"
            raise ValueError(f"unknown card {card!r}; known cards: {known}")
        await self.store.set_card_assignment(f"{kind[0]}:{ident}", card)
        await self.refresh_assignments()
        await self.store.announce_reload(f"assignments {self.instance}")

    def card_assignments(self) -> dict[str, dict[str, str]]:
        """Cards assigned by config and from jCli: ``{'user': {...}, 'group': {...}}``."""
        return {
            "user": {**self.config.cards.users, **self._assignments["user"]},
            "group": {**self.config.cards.groups, **self._assignments["group"]},
        }

    async def would_accept(self, uid: str, gid: str | None, quote: Quote) -> str:
        """Whether ``uid``'s wallet would accept ``quote`` now (credit and limits)."""
        wallet = await self.store.wallet(uid)
        if wallet is None:
            if self.config.missing_wallet == "pass":
                return "yes: no wallet, messages pass uncharged"
            return f"no: {Refusal.NO_WALLET.label}"
        if quote.total > wallet.available:
            return f"no: {Refusal.INSUFFICIENT_CREDIT.label}"
        names = {"day": "daily", "week": "weekly", "month": "monthly"}
        for usage in wallet.usage:
            period = names[usage.period.kind]
            if usage.credit_limit is not None and usage.credits + quote.total > usage.credit_limit:
                return f"no: {period}_credit_limit"
            if usage.msg_limit is not None and usage.msgs + 1 > usage.msg_limit:
                return f"no: {period}_message_limit"
        return "yes"
