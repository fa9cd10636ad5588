"""Charging one MT message: price it, hold its credits, tell Jasmin what to do.

Used by both ways in (the in-process interceptor of our jasmind launcher and the drop-in
interceptord). Parts are counted as Jasmin will send them:

- HTTP ``/send`` builds a ``nextPdu`` chain: one part per PDU, one message id.
- SMPP: one submit_sm is one message, unless it is itself one part of a concatenated
  message (UDH or SAR). Then the first part that arrives holds credits for every part, so a
  long message is refused whole instead of half sent; later parts claim that reservation.

The reservation ref travels on the PDU (see :mod:`jasmin_credits.settlement`) into
Jasmin's queue, where settlement links it to the message id (or, with the opt-in
``settlement.link: queueing``, our launcher links it at Jasmin's queueing step:
:mod:`jasmin_credits.linking`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidDestination, NotPriced, Refusal, StoreUnavailable
from .leasing import Lease, LeaseBook
from .metrics import NO_METRICS
from .parts import Parts, count_http_chain, count_pdu
from .pricing import Pricer, Quote
from .settlement import lease_field, tag_pdu
from .store import Concat, CreditStore, new_ref, quote_record

log = logging.getLogger("jasmin-credits")


@dataclass(frozen=True)
class Decision:
    """What happened to one message."""

    refusal: Refusal | None = None
    ref: str | None = None
    quote: Quote | None = None
    charged: bool = False
    """False when the message passes without a charge (no wallet, or fail-open)."""
    detail: str = ""
    lease: Lease | None = None
    """The gateway's credit lease the message was held against (no reservation in Redis
    yet: settlement writes it from the tag)."""

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def _value(param: Any) -> str:
    if isinstance(param, bytes):
        return param.decode("latin-1")
    return "" if param is None else str(param)


def concat_key(pdu: Any, parts: Parts) -> Concat | None:
    """The key that groups the parts of one concatenated SMPP message, if this is one."""
    info = parts.concat
    if info is None or info.total < 2:
        return None
    params = pdu.params
    raw = "\x1f".join(
        (_value(params.get("source_addr")), _value(params.get("destination_addr")),
         str(info.ref), str(info.total))
    )
    return Concat(hashlib.sha1(raw.encode("utf-8")).hexdigest()[:20], info.seq, info.total)


def count_parts(pdu: Any) -> Parts:
    """Parts of what Jasmin will send for this PDU (a chain is one part per PDU)."""
    if getattr(pdu, "nextPdu", None) is not None:
        return count_http_chain(pdu)
    return count_pdu(pdu)


class Charger:
    """Prices and holds credits for routables handed over by Jasmin's interceptor step.

    ``pricer`` is a callable returning the current :class:`Pricer` (cards can be reloaded
    while running). ``missing_wallet`` is ``pass`` or ``refuse``; ``on_store_error`` is
    ``refuse`` (fail closed) or ``pass`` (fail open: the message goes, uncharged, and
    ``on_unrecorded`` is told so it can be reconciled).
    """

    def __init__(
        self,
        store: CreditStore,
        pricer: Callable[[], Pricer],
        *,
        missing_wallet: str = "pass",
        on_store_error: str = "refuse",
        on_unrecorded: Callable[[str, Quote, str], None] | None = None,
        metrics: Any = NO_METRICS,
        leases: LeaseBook | None = None,
    ):
        self.metrics = metrics
        self.leases = leases
        """Credit leases (``charging.lease``): set by the launcher once jasmind's AMQP
        channel can carry their end markers."""
        self.store = store
        self.pricer = pricer
        self.missing_wallet = missing_wallet
        self.on_store_error = on_store_error
        self.on_unrecorded = on_unrecorded

    async def charge(self, routable: Any) -> Decision:
        """Hold credits for ``routable`` and tag its PDU; never raises."""
        try:
            decision = await self._charge(routable)
        except StoreUnavailable as error:
            decision = self._store_failed(routable, str(error))
        except Exception as error:  # a bug must not become ESME_RSYSERR retry storms
            log.exception("charging failed unexpectedly")
            decision = self._store_failed(routable, f"internal error: {error}")
        if decision.refusal is not None:
            self.metrics.refused(decision.refusal.label)
        elif decision.charged and decision.quote is not None:
            self.metrics.charged(decision.quote.country or "", decision.quote.total)
        return decision

    async def _charge(self, routable: Any) -> Decision:
        pdu = routable.pdu
        user = routable.user
        uid = str(user.uid)
        gid = str(user.group.gid) if getattr(user, "group", None) is not None else None
        parts = count_parts(pdu)
        concat = concat_key(pdu, parts) if parts.parts == 1 else None
        try:
            quote = self.pricer().quote(uid, gid, pdu.params.get("destination_addr"), parts)
        except InvalidDestination as error:
            return Decision(Refusal.INVALID_DESTINATION, detail=str(error))
        except NotPriced as error:
            return Decision(Refusal.NOT_PRICED, detail=str(error))
        if concat is None and self.leases is not None:
            decision = self._hold_leased(pdu, uid, quote)
            if decision is not None:
                return decision
        hold = await self.store.reserve(
            uid, quote.unit_price, quote.parts, concat=concat,
            country=quote.country or "", destination=quote.destination,
            prefix=quote.prefix, card=quote.card,
        )
        if hold.no_wallet:
            if self.missing_wallet == "refuse":
                return Decision(Refusal.NO_WALLET, quote=quote,
                                detail=f"user {uid} has no wallet")
            return Decision(quote=quote, detail="no wallet: not charged")
        if hold.refusal is not None:
            return Decision(hold.refusal, quote=quote, detail=hold.refusal.label)
        tag_pdu(pdu, uid, hold.ref, quote.parts if concat is None else 1)
        if concat is None and self.leases is not None:
            self.leases.ask(uid, quote.unit_price * quote.parts)  # for the next ones
        return Decision(ref=hold.ref, quote=quote, charged=True)

    def _hold_leased(self, pdu: Any, uid: str, quote: Quote) -> Decision | None:
        """Hold a single message against ``uid``'s lease, or None (no lease can)."""
        now = self.store.now_ms()
        amount = quote.unit_price * quote.parts
        lease = self.leases.hold(uid, amount, self.store.period_ids(now))  # type: ignore[union-attr]
        if lease is None:
            return None
        ref = new_ref(now)
        where = quote_record(quote.country or "", quote.destination, quote.prefix, quote.card)
        tag_pdu(pdu, uid, ref, quote.parts, lease_field(lease.id, quote.unit_price, 1, where))
        return Decision(ref=ref, quote=quote, charged=True, lease=lease)

    def give_back(self, decision: Decision) -> bool:
        """Jasmin did not queue a message held against a lease: the lease holds it no more.
        False for a message held in Redis (release that one there)."""
        if decision.lease is None or self.leases is None or decision.quote is None:
            return False
        self.leases.give_back(decision.lease, decision.quote.unit_price * decision.quote.parts)
        return True

    def _store_failed(self, routable: Any, why: str) -> Decision:
        if self.on_store_error == "pass":
            log.warning("credit store unavailable (%s): message passes uncharged", why)
            if self.on_unrecorded is not None:
                try:
                    pricer = self.pricer()
                    pdu = routable.pdu
                    uid = str(routable.user.uid)
                    gid = str(routable.user.group.gid)
                    quote = pricer.quote(uid, gid, pdu.params.get("destination_addr"),
                                         count_parts(pdu))
                    self.on_unrecorded(uid, quote, why)
                except Exception:
                    log.exception("could not record an uncharged message for reconciliation")
            return Decision(detail=f"store unavailable, fail-open: {why}")
        log.warning("credit store unavailable (%s): message refused", why)
        return Decision(Refusal.STORE_UNAVAILABLE, detail=why)
