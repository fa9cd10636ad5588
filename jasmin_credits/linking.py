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
(``initial_delay`` up to ``max_delay``) for at most ``give_up_after`` seconds, by
:class:`~jasmin_credits.retrying.BackgroundRetry` (shared with
:mod:`jasmin_credits.observing`, which settles the SMSC's answers the same way): the runtime
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

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .metrics import NO_METRICS
from .retrying import BackgroundRetry, wrap_method
from .settlement import PDU_ATTRIBUTE, link_tagged
from .store import CreditStore

log = logging.getLogger("jasmin-credits.linking")


def submitted_pdu(args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """The ``SubmitSmPDU`` of a ``perspective_submit_sm(uid, cid, SubmitSmPDU, ...)`` call
    (Jasmin's SMPP server and HTTP API pass it by keyword), or None."""
    if "SubmitSmPDU" in kw:
        return kw["SubmitSmPDU"]
    return args[2] if len(args) > 2 else None


class QueueingLinker(BackgroundRetry):
    """Links held messages to their Jasmin message id, retrying while Redis is unavailable.

    :meth:`submitted` starts one link and returns at once; it never raises. The retry
    settings (``give_up_after``, ``initial_delay``, ...) and :meth:`stop` are those of
    :class:`~jasmin_credits.retrying.BackgroundRetry`; ``linked`` and ``given_up`` count
    what happened (for tests and logs), ``metrics`` counts retries and links given up.
    """

    what = "message link"
    log = logging.getLogger("jasmin-credits.linking")

    def __init__(self, store: CreditStore, *, clock: IReactorTime, metrics: Any = NO_METRICS,
                 **retry: Any):
        super().__init__(clock=clock, on_retry=metrics.link_retried,
                         on_give_up=metrics.link_given_up, **retry)
        self.store = store
        self.metrics = metrics

    @property
    def linked(self) -> int:
        """Links written."""
        return self.done

    def submitted(self, msgid: str, pdu: Any) -> None:
        """Jasmin queued ``pdu`` (a tagged SubmitSM, head of its chain) as ``msgid``: link it."""
        self.run(lambda: link_tagged(self.store, msgid, pdu), f"link of message {msgid}",
                 lambda why: log.error(
                     "message %s not linked to its hold %r (%s): the sweeper releases the "
                     "hold, the message is not charged", msgid,
                     getattr(pdu, PDU_ATTRIBUTE, None), why))


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
            pdu = submitted_pdu(args, kw)
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
        self.linker.failed_before_run(
            "cannot link a queued message: the sweeper releases its hold")


def install(client_manager: Any, linker: QueueingLinker) -> LinkingSubmitSm:
    """Wrap ``client_manager.perspective_submit_sm`` (Jasmin's ``SMPPClientManagerPB``
    instance, shared by its SMPP server and HTTP API) so queued messages are linked."""
    return wrap_method(client_manager, "perspective_submit_sm", LinkingSubmitSm, linker)


__all__ = ["LinkingSubmitSm", "QueueingLinker", "install", "submitted_pdu"]
