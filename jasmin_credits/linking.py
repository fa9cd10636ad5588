"""``settlement.link: queueing``: link each hold to Jasmin's message id as Jasmin queues it.

Jasmin's SMPP server and HTTP ``/send`` hand every routed message to
``SMPPClientManagerPB.perspective_submit_sm(uid=, cid=, SubmitSmPDU=, ..., pickled=False)``
inside jasmind: it pickles the PDU, publishes it on ``submit.sm.<cid>`` and returns a
Deferred, already fired with the message id (its callers read ``.result`` at once).
:func:`install` replaces that method on the launcher's instance (an instance attribute;
Jasmin's class is untouched) by :class:`LinkingSubmitSm`, which returns exactly what Jasmin's
method returns and, when the PDU carries our tag (set by the charging step; a ``nextPdu``
chain carries it on its head, with every part counted), hands the message id to
:class:`QueueingLinker`. That runs :func:`~jasmin_credits.settlement.link_tagged`, the step
the ``submit.sm.*`` consumer runs under ``settlement.link: events``, and Jasmin never waits
for it. Settlement then needs no copy of every PDU from RabbitMQ (unpickling it cost about
400 µs of CPU per message).

Failures never reach Jasmin. With Redis unavailable a link is retried with doubling delays
(``initial_delay`` up to ``max_delay``) for at most ``give_up_after`` seconds: the runtime
passes the store's ``pending_outcome_ttl``, because a late link still charges (the store
holds the credits again if the sweeper released them meanwhile, and applies the SMSC's
answer it kept) until that kept answer expires. A link is given up after that, when more
than ``max_waiting`` links already wait, or at once for a malformed tag or any other error:
logged, counted (``links_given_up_total``); the sweeper then releases the hold and the
message goes uncharged.

Links still waiting when jasmind stops are tried once more by :meth:`QueueingLinker.stop`.
When jasmind dies, links not yet written are lost (normally the last Redis round trip's
worth, or every link waiting through an outage): a link in memory is not durable like a
``submit.sm.*`` event in our queue. ``settlement.link: events`` keeps that guarantee, at
the cost of the speed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .errors import StoreUnavailable
from .metrics import NO_METRICS
from .settlement import PDU_ATTRIBUTE, link_tagged
from .store import CreditStore

log = logging.getLogger("jasmin-credits.linking")


class QueueingLinker:
    """Links held messages to their Jasmin message id, retrying while Redis is unavailable.

    :meth:`submitted` starts one link and returns at once; it never raises. ``clock`` times
    the retries. ``linked`` and ``given_up`` count what happened (for tests and logs).
    """

    def __init__(
        self,
        store: CreditStore,
        *,
        clock: IReactorTime,
        give_up_after: float = 21_600.0,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        max_waiting: int = 100_000,
        warn_every: float = 10.0,
        metrics: Any = NO_METRICS,
    ):
        if not 0 < initial_delay <= max_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        self.store = store
        self.clock = clock
        self.give_up_after = give_up_after
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.max_waiting = max_waiting
        self.warn_every = warn_every
        self.metrics = metrics
        self.linked = 0
        self.given_up = 0
        self._pending: set[Deferred] = set()
        self._sleeping: dict[Deferred, IDelayedCall] = {}
        self._stopping = False
        self._last_warning: float | None = None

    @property
    def waiting(self) -> int:
        """Links waiting for their next attempt."""
        return len(self._sleeping)

    @property
    def pending(self) -> int:
        """Links not finished yet (in flight or waiting)."""
        return len(self._pending)

    def submitted(self, msgid: str, pdu: Any) -> None:
        """Jasmin queued ``pdu`` (a tagged SubmitSM, head of its chain) as ``msgid``: link it."""
        retry = not self._stopping and len(self._sleeping) < self.max_waiting
        d = Deferred.fromCoroutine(self._link(msgid, pdu, retry))
        if not d.called:
            self._pending.add(d)
            d.addBoth(self._finished, d)
        d.addErrback(self._unexpected, msgid)

    async def _link(self, msgid: str, pdu: Any, retry: bool) -> None:
        started = self.clock.seconds()
        delay = self.initial_delay
        attempts = 0
        while True:
            attempts += 1
            try:
                await link_tagged(self.store, msgid, pdu)
            except StoreUnavailable as error:
                waited = self.clock.seconds() - started
                if not retry or self._stopping or waited + delay > self.give_up_after:
                    self._give_up(msgid, pdu, f"credit store unavailable after {attempts} "
                                              f"attempt(s): {error}")
                    return
                self.metrics.link_retried()
                self._warn(error)
                await self._sleep(delay)
                delay = min(delay * 2, self.max_delay)
            except ValueError as error:  # a malformed tag: retrying cannot help
                self._give_up(msgid, pdu, f"malformed tag: {error}")
                return
            except Exception as error:  # noqa: BLE001 - a bug must not become a retry loop
                log.exception("linking message %s failed", msgid)
                self._give_up(msgid, pdu, f"{type(error).__name__}: {error}")
                return
            else:
                self.linked += 1
                if attempts > 1:
                    log.debug("message %s linked after %d attempts", msgid, attempts)
                return

    def _give_up(self, msgid: str, pdu: Any, why: str) -> None:
        self.given_up += 1
        self.metrics.link_given_up()
        log.error("message %s not linked to its hold %r (%s): the sweeper releases the hold, "
                  "the message is not charged", msgid, getattr(pdu, PDU_ATTRIBUTE, None), why)

    def _warn(self, error: Exception) -> None:
        now = self.clock.seconds()
        if self._last_warning is None or now - self._last_warning >= self.warn_every:
            self._last_warning = now
            log.warning("credit store unavailable (%s): %d message link(s) waiting to retry",
                        error, len(self._sleeping) + 1)

    def _sleep(self, delay: float) -> Deferred:
        d: Deferred = Deferred()
        self._sleeping[d] = self.clock.callLater(delay, self._wake, d)
        return d

    def _wake(self, d: Deferred) -> None:
        call = self._sleeping.pop(d, None)
        if call is not None and call.active():
            call.cancel()
        d.callback(None)

    def _finished(self, result: Any, d: Deferred) -> Any:
        self._pending.discard(d)
        return result

    def _unexpected(self, failure: Any, msgid: str) -> None:
        self.given_up += 1
        self.metrics.link_given_up()
        log.error("linking message %s failed: %s", msgid, failure.getTraceback())

    def stop(self) -> Deferred:
        """Try every waiting link once more, now; fire when no link is in flight.

        Bounded by the store's call timeout. Links submitted from now on are tried once.
        """
        self._stopping = True
        for d in list(self._sleeping):
            self._wake(d)
        if not self._pending:
            return succeed(None)
        return DeferredList(list(self._pending), consumeErrors=True).addCallback(lambda _: None)


class LinkingSubmitSm:
    """Stands for ``perspective_submit_sm`` of one ``SMPPClientManagerPB`` instance.

    Calls Jasmin's method and returns its result unchanged (the same Deferred, whose
    callbacks only gain one that passes the message id on untouched). If the PDU carries our
    tag and Jasmin queued it (a message id, not ``False``), :meth:`QueueingLinker.submitted`
    links it. An untagged PDU costs one ``getattr``; a pickled one (``pickled=True``, a
    remote PB caller) is bytes, never tagged, and left alone.
    """

    def __init__(self, submit_sm: Callable[..., Any], linker: QueueingLinker):
        self.submit_sm = submit_sm
        self.linker = linker

    def __call__(self, *args: Any, **kw: Any) -> Any:
        result = self.submit_sm(*args, **kw)
        try:
            pdu = kw["SubmitSmPDU"] if "SubmitSmPDU" in kw else (
                args[2] if len(args) > 2 else None)
            if getattr(pdu, PDU_ATTRIBUTE, None) is not None and isinstance(result, Deferred):
                result.addCallback(self._queued, pdu)
        except Exception:  # noqa: BLE001 - never into Jasmin's path
            self._failed()
        return result

    def _queued(self, msgid: Any, pdu: Any) -> Any:
        try:
            if isinstance(msgid, str) and msgid:
                self.linker.submitted(msgid, pdu)
        except Exception:  # noqa: BLE001 - never into Jasmin's path
            self._failed()
        return msgid

    def _failed(self) -> None:
        log.exception("cannot link a queued message: the sweeper releases its hold")
        try:
            self.linker.metrics.link_given_up()
        except Exception:  # noqa: BLE001 - nothing more to do
            pass


def install(client_manager: Any, linker: QueueingLinker) -> LinkingSubmitSm:
    """Wrap ``client_manager.perspective_submit_sm`` (Jasmin's ``SMPPClientManagerPB``
    instance, shared by its SMPP server and HTTP API) so queued messages are linked."""
    current = client_manager.perspective_submit_sm
    if isinstance(current, LinkingSubmitSm):
        return current
    wrapper = LinkingSubmitSm(current, linker)
    client_manager.perspective_submit_sm = wrapper
    return wrapper


__all__ = ["LinkingSubmitSm", "QueueingLinker", "install"]
