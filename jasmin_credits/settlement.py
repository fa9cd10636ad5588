"""Settle reservations from Jasmin's own AMQP events.

A reservation travels with the message: the charging step sets ``pdu.jasmin_credits =
{"uid", "ref", "parts"}`` on the SubmitSM (:func:`tag_pdu`), Jasmin pickles that PDU into the
``submit.sm.<cid>`` message, and :class:`Settlement` reads it back there:

- ``submit.sm.*`` (property ``message-id`` = Jasmin msgid, body = pickled SubmitSM): a tagged
  PDU links ``parts`` parts of its reservation to the msgid (``store.link``, through
  :func:`link_tagged`). Untagged messages (users without a wallet, pass policies) are not
  ours. Only with ``settlement.link: events``: by default our launcher links each message
  as Jasmin queues it (:mod:`jasmin_credits.linking`), and nothing consumes this event.
- ``dlr.submit_sm_resp`` (body = status name): ``ESME_ROK`` commits, an error refunds.
  Jasmin publishes this event for *every* response, including errors it will retry
  (``[sm-listener] submit_error_retrial``), and says nothing about which attempt it was:
  the retry counter lives in the listener's memory (``submit_retrials``), is reset when
  jasmind restarts, and counts not-bound requeues too. So an error whose status is in
  ``retry_statuses`` is never taken as final by default (``unknown_outcome_policy='wait'``):
  a later ``ESME_ROK`` commits it, and if the retries all fail the sweeper settles it after
  ``unanswered_timeout`` by its ``unanswered_policy``. ``'refund'`` refunds at once instead
  (a retry that then succeeds is not charged: the store never charges a refunded message).
  On success the upstream id (header ``smpp_msgid``) is mapped to the msgid, with a TTL,
  but only when DLR refunds are enabled.
- ``dlr.deliver_sm`` (property ``message-id`` = upstream id as Jasmin codes it for the
  connector, body = stat): a stat in ``dlr_refund_stats`` refunds the message (charged or
  not). If the receipt overtakes the response that maps its id, it is parked and the
  response applies it (each side writes, then reads the other's key, so one of them sees
  both).

The store makes every call idempotent, so redeliveries, two consumers, or two gateways
sharing or duplicating the queues settle each message once.

With ``settlement.link: events``, :class:`SettlementConsumer` wires the handlers to queues
of our own on exchange ``messaging``: it acks after the store call succeeded, requeues
after ``requeue_delay`` when Redis is unavailable (never lost, never a hot loop) and acks
(after logging) a message it cannot read, so one bad message never stops settlement. With
``queueing`` (opt-in, our launcher only) the gateway hands both ``dlr.*`` events to the
same handlers as jasmind publishes them (:mod:`jasmin_credits.observing`), and the consumer
only drains what queues of an earlier configuration still hold.
"""

from __future__ import annotations

import io
import logging
import pickle
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from txamqp.client import ChannelClosed
from txamqp.client import Closed as ClientClosed
from txamqp.content import Content
from txamqp.queue import Closed as QueueClosed

from .amqp import EXCHANGE, QUEUE_PREFIX, AmqpConnection, AmqpSettings, declare_bound_queue
from .errors import StoreUnavailable
from .keys import check_uid
from .metrics import NO_METRICS
from .store import CreditStore, created_ms

log = logging.getLogger("jasmin-credits.settlement")

PDU_ATTRIBUTE = "jasmin_credits"
"""Name of the attribute our charging step sets on the SubmitSM PDU."""

JASMIN_RETRY_STATUSES = frozenset({"ESME_RSYSERR", "ESME_RTHROTTLED", "ESME_RMSGQFUL",
                                   "ESME_RINVSCHED"})
"""Statuses Jasmin 0.11.1 retries by default (``[sm-listener] submit_error_retrial``).

Pass the keys of your own ``submit_error_retrial`` if you changed it, e.g.
``SMPPClientSMListenerConfig(path).submit_error_retrial``.
"""

SUBMIT_SM_KEYS = ("submit.sm.*",)
SUBMIT_SM_RESP_KEYS = ("dlr.submit_sm_resp",)
DELIVER_SM_KEYS = ("dlr.deliver_sm",)

SUBMIT_SM, SUBMIT_SM_RESP, DELIVER_SM = "submit_sm", "submit_sm_resp", "deliver_sm"
"""The kinds of Jasmin's events settlement can read from queues of its own."""
ALL_EVENTS = frozenset({SUBMIT_SM, SUBMIT_SM_RESP, DELIVER_SM})


def events_consumed(link: str, dlr_refund: Iterable[str]) -> frozenset[str]:
    """The events settlement reads from our queues for ``settlement.link`` and
    ``settlement.dlr_refund``.

    ``events``: ``submit.sm.*`` (links) and ``dlr.submit_sm_resp`` (outcomes), and
    ``dlr.deliver_sm`` only when some receipt refunds: with ``dlr_refund`` empty (the
    default) a receipt changes nothing, so no copy of it is queued nor read. ``queueing``:
    none (the gateway links and settles in process, :mod:`jasmin_credits.observing`).
    """
    if link != "events":
        return frozenset()
    return frozenset({SUBMIT_SM, SUBMIT_SM_RESP} | ({DELIVER_SM} if list(dlr_refund) else set()))


# -- the tag on the PDU -----------------------------------------------------------------------

def tag_pdu(pdu: Any, uid: str, ref: str, parts: int, lease: str | None = None) -> None:
    """Mark ``pdu`` as carrying ``parts`` parts of reservation ``ref`` of ``uid``; ``lease``
    (:func:`lease_field`) when the gateway held it against a credit lease, so that
    settlement writes the reservation itself."""
    tag = {"uid": uid, "ref": ref, "parts": int(parts)}
    if lease is not None:
        tag["lease"] = lease
    setattr(pdu, PDU_ATTRIBUTE, tag)


def lease_field(lease_id: str, unit_price: int, messages: int, quote: str) -> str:
    """A tag's ``lease`` value: ``"<lease id> <unit price> <messages> <quote>"``."""
    return f"{lease_id} {int(unit_price)} {int(messages)} {quote}"


@dataclass(frozen=True)
class LeasedHold:
    """What a tag's ``lease`` value says: the hold settlement writes (store.hold_leased)."""

    lease_id: str
    unit_price: int
    messages: int
    quote: str


def parse_lease(value: Any) -> LeasedHold:
    """The :class:`LeasedHold` of a tag's ``lease`` value; ValueError if malformed."""
    if not isinstance(value, str):
        raise ValueError(f"lease is not a string: {value!r:.80}")
    fields = value.split(" ", 3)
    if (len(fields) != 4 or not fields[1].isdigit() or len(fields[1]) > 15
            or not fields[2].isdigit() or len(fields[2]) > 6 or int(fields[2]) < 1
            or len(fields[3]) > 300 or not fields[3].isprintable()):
        raise ValueError(f"lease is not '<id> <unit> <messages> <quote>': {value!r:.80}")
    created_ms(fields[0])
    return LeasedHold(fields[0], int(fields[1]), int(fields[2]), fields[3])


def read_tag(pdu: Any) -> dict[str, Any] | None:
    """The tag :func:`tag_pdu` set, or None; raises ValueError if it is not well formed."""
    tag = getattr(pdu, PDU_ATTRIBUTE, None)
    if tag is None:
        return None
    return check_tag(tag)


TAG_HEADER = PDU_ATTRIBUTE
"""The header of a ``submit.sm.*`` message that repeats its PDU's tag (our launcher's jasmind
sets it, :mod:`jasmin_credits.tagheaders`): ``"<uid> <ref> <parts>"``."""


def tag_header(tag: dict[str, Any]) -> str:
    """The :data:`TAG_HEADER` value for a tag of :func:`tag_pdu` (its lease last)."""
    lease = tag.get("lease")
    if lease is None:
        return f"{tag['uid']} {tag['ref']} {tag['parts']}"
    return f"{tag['uid']} {tag['ref']} {tag['parts']} {lease}"


LEASE_END_HEADER = "jasmin_credits_lease_end"
"""The header of a gateway's lease end marker: ``"<uid> <lease id>"``."""

LEASE_END_KEY = "submit.sm.jasmin_credits_lease_end"
"""The marker's routing key: a ``submit.sm.*`` key (so it reaches settlement's queue behind
the lease's messages) that names no Jasmin connector (do not name one so)."""


def lease_end_marker(uid: str, lease_id: str) -> dict[str, Any]:
    """The arguments of Jasmin's ``AmqpFactory.publish`` for a lease's end marker."""
    content = Content(b"", properties={
        "message-id": f"lease-end-{lease_id}",
        "delivery-mode": 2,
        "headers": {LEASE_END_HEADER: f"{uid} {lease_id}"},
    })
    return {"exchange": EXCHANGE, "routing_key": LEASE_END_KEY, "content": content}


def header_tag(properties: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tag a ``submit.sm.*`` message's :data:`TAG_HEADER` carries, or None without one;
    ValueError if it is not well formed (checked as the PDU's own, :func:`check_tag`)."""
    value = _headers(properties).get(TAG_HEADER)
    if value is None:
        return None
    fields = _text(value).split(" ", 3)
    if len(fields) < 3 or not fields[2].isdigit() or len(fields[2]) > 6:
        raise ValueError(f"{TAG_HEADER} header is not '<uid> <ref> <parts>': {value!r:.80}")
    tag = {"uid": fields[0], "ref": fields[1], "parts": int(fields[2])}
    if len(fields) == 4:
        tag["lease"] = fields[3]
    return check_tag(tag)


def check_tag(tag: Any) -> dict[str, Any]:
    """``tag`` as a clean ``{"uid", "ref", "parts"}`` dict; ValueError if it is not one."""
    if not isinstance(tag, dict):
        raise ValueError(f"{PDU_ATTRIBUTE} is not a dict: {tag!r}")
    uid, ref, parts = tag.get("uid"), tag.get("ref"), tag.get("parts")
    check_uid(uid)  # type: ignore[arg-type]
    if not isinstance(ref, str):
        raise ValueError(f"bad reservation ref {ref!r}")
    created_ms(ref)
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise ValueError(f"bad part count {parts!r}")
    if tag.get("lease") is None:
        return {"uid": uid, "ref": ref, "parts": parts}
    parse_lease(tag["lease"])
    return {"uid": uid, "ref": ref, "parts": parts, "lease": tag["lease"]}


# -- reading Jasmin's pickled SubmitSM ----------------------------------------------------------

_SAFE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray",
                            "str", "int", "float", "bool", "complex", "object"})
_SAFE_GLOBALS = frozenset({("_codecs", "encode"), ("copyreg", "_reconstructor"),
                           ("copy_reg", "_reconstructor"), ("collections", "OrderedDict")})


class InertObject:
    """What :func:`load_submit_sm` builds where Jasmin's pickle names a class of ``smpp`` or
    ``jasmin``: an object holding the pickled state (its ``__dict__``) and nothing else.

    No code of those packages runs while a body loads: not their constructors, not their
    ``__setstate__`` or enum look-ups, whatever a body names. Settlement needs only our tag
    (a plain dict attribute) and the class's name, so stand-ins are all it builds.
    """

    pickled_name: tuple[str, str] = ("", "")
    """The (module, name) the pickle named."""

    def __init__(self, *args: Any) -> None:
        # Reached when a pickle calls the class (REDUCE: enum members, with their value).
        self.__dict__["pickled_args"] = args

    def __repr__(self) -> str:
        return f"<inert {'.'.join(self.pickled_name)}>"


_MAX_INERT_CLASSES = 1000
"""Stand-in classes kept for reuse; past this many (only a hostile publisher names that
many), new ones are made per body and not kept."""


class _PduUnpickler(pickle.Unpickler):
    """Loads what Jasmin pickles into ``submit.sm.*``, running none of its classes' code.

    The body comes from Jasmin's own queue, but anyone who can publish on the broker could
    put a pickle there. A class of ``smpp`` or ``jasmin`` becomes an :class:`InertObject`
    stand-in; a few harmless builtins load as themselves; every other global is refused,
    and so is a dotted name: protocol 4 resolves ``module`` + ``"a.b"`` attribute by
    attribute, which would reach whatever a Jasmin module imported (its ``sys``, its
    ``pickle``).
    """

    _known: dict[tuple[str, str], Any] = {}
    """Globals already resolved (every PDU names the same dozen)."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        found = self._known.get(key)
        if found is not None:
            return found
        if not name.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.split(".")[0] in ("smpp", "jasmin"):
            found = type(name, (InertObject,), {"__module__": module, "__qualname__": name,
                                               "pickled_name": key})
        elif key in _SAFE_GLOBALS or (module in ("builtins", "__builtin__")
                                      and name in _SAFE_BUILTINS):
            # (protocol 2 names builtins "__builtin__"; the base class maps it back)
            found = super().find_class(module, name)
        else:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if len(self._known) < _MAX_INERT_CLASSES:
            self._known[key] = found
        return found


_SUBMIT_SM = ("smpp.pdu.operations", "SubmitSM")


def load_submit_sm(body: bytes) -> InertObject:
    """The SubmitSM of a ``submit.sm.*`` message, as inert stand-ins (:class:`InertObject`:
    its attributes, our tag among them, and no behaviour); ValueError if it is not one."""
    source: io.IOBase = io.BytesIO(body)
    if body[1:2] < b"\x04":
        # Protocol 2 (Jasmin's default ``pickle_protocol``) has no frames: the C unpickler
        # would call read() once per opcode; with peek() it buffers the body at once
        # (2x faster, docs/benchmarks.md, tenth session). Framed protocols 4-5 need not.
        source = io.BufferedReader(source)  # type: ignore[arg-type]
    try:
        pdu = _PduUnpickler(source).load()
    except Exception as error:
        raise ValueError(f"cannot unpickle the body: {error}") from None
    if getattr(type(pdu), "pickled_name", None) != _SUBMIT_SM:
        raise ValueError(f"the body is a {type(pdu).__name__}, not a SubmitSM")
    return pdu


# -- the handlers ------------------------------------------------------------------------------

class Outcome(Enum):
    """What a handler did with one event."""

    SETTLED = "settled"
    """The store was called (link, commit or refund)."""
    WAITING = "waiting"
    """A retriable error: nothing settled, a later event or the sweeper will."""
    IGNORED = "ignored"
    """Not ours, or nothing to do under the configured policy."""
    MALFORMED = "malformed"
    """The message cannot be read; logged."""


_T = TypeVar("_T")


class Malformed(ValueError):
    """An event is not shaped like the ones Jasmin publishes."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _reading(read: Callable[..., _T], *args: Any) -> _T:
    """``read(*args)``, a step that reads an event: what it raises about the event's shape
    is :class:`Malformed` (the event is dropped), unlike an error of the store calls that
    follow (the event is retried)."""
    try:
        return read(*args)
    except Malformed:
        raise
    except (ValueError, TypeError, KeyError, UnicodeError) as error:
        raise Malformed(str(error)) from None


def _lease_end_value(value: Any) -> tuple[str, str]:
    """``(uid, lease id)`` of a lease end marker's header."""
    uid, _, lease_id = _text(value).partition(" ")
    check_uid(uid)
    created_ms(lease_id)
    return uid, lease_id


def _body_tag(body: bytes) -> dict[str, Any] | None:
    """The tag of the SubmitSM pickled in a ``submit.sm.*`` body (stock jasmind)."""
    return read_tag(load_submit_sm(body))


def _message_id(properties: Mapping[str, Any]) -> str:
    msgid = _text(properties.get("message-id") or "").strip()
    if not msgid:
        raise Malformed("no message-id property")
    return msgid


def _headers(properties: Mapping[str, Any]) -> Mapping[str, Any]:
    headers = properties.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise Malformed(f"headers is a {type(headers).__name__}")
    return headers


def _status(body: Any) -> str:
    status = _text(body).strip()
    if not status or len(status) > 64 or not status.replace("_", "").isalnum():
        raise Malformed(f"not a status name: {status[:64]!r}")
    return status


async def link_tagged(store: CreditStore, msgid: str, pdu: Any) -> Outcome:
    """Link the reservation a tagged SubmitSM (the head of its chain) carries to ``msgid``.

    The one linking step, shared by the ``submit.sm.*`` consumer and by the launcher's link at
    queueing time (:mod:`jasmin_credits.linking`). ``IGNORED`` for an untagged PDU, else
    ``SETTLED`` (a reservation that is gone is logged); ValueError for a malformed tag,
    :class:`StoreUnavailable` when Redis is unavailable. Idempotent on ``msgid``.
    """
    return await link_tag(store, msgid, read_tag(pdu))


async def link_tag(store: CreditStore, msgid: str, tag: dict[str, Any] | None) -> Outcome:
    """:func:`link_tagged` for a tag already read (:func:`read_tag`, :func:`header_tag`)."""
    if tag is None:
        return Outcome.IGNORED
    if "lease" in tag:
        # Held against a gateway's lease: write the reservation and link it, in one call
        # (two could run in either order). Should the lease's end marker, which follows this
        # message in the queue, reach Redis first, the hold is taken from the wallet
        # ('late_hold'): the message is still charged once.
        lease = parse_lease(tag["lease"])
        settled = await store.link_leased(tag["uid"], tag["ref"], msgid, lease.lease_id,
                                          lease.unit_price, tag["parts"], lease.messages,
                                          lease.quote, lazy=True)
    else:
        settled = await store.link(tag["uid"], tag["ref"], msgid, tag["parts"], lazy=True)
    if not settled.found:
        log.warning("submit.sm %s: reservation %s of %s is gone (expired or wallet "
                    "removed): not linked", msgid, tag["ref"], tag["uid"])
    return Outcome.SETTLED


class Settlement:
    """Turns Jasmin's events into store calls. Every handler is a coroutine taking the raw
    AMQP ``body`` (bytes) and ``properties`` (with ``message-id`` and ``headers``).

    Handlers return an :class:`Outcome` (``MALFORMED`` after logging an unreadable message)
    and raise :class:`StoreUnavailable` when Redis is unavailable: the caller retries later.
    """

    def __init__(
        self,
        store: CreditStore,
        *,
        unknown_outcome_policy: str = "wait",
        dlr_refund_stats: Iterable[str] = frozenset(),
        retry_statuses: Iterable[str] = JASMIN_RETRY_STATUSES,
        smsc_map_ttl_ms: int | None = None,
        dlr_park_ttl_ms: int = 3_600_000,
        metrics: Any = None,
    ):
        self.metrics = metrics
        if unknown_outcome_policy not in ("wait", "refund"):
            raise ValueError("unknown_outcome_policy must be 'wait' or 'refund'")
        self.store = store
        self.unknown_outcome_policy = unknown_outcome_policy
        self.dlr_refund_stats = frozenset(s.upper() for s in dlr_refund_stats)
        self.retry_statuses = frozenset(retry_statuses)
        if smsc_map_ttl_ms is None:
            smsc_map_ttl_ms = int(store.settings.message_link_ttl.total_seconds() * 1000)
        self.smsc_map_ttl_ms = smsc_map_ttl_ms
        self.dlr_park_ttl_ms = dlr_park_ttl_ms
        self.tags_from_headers = 0
        """``submit.sm.*`` events linked from their tag header (no body unpickled)."""

    # Redis keys of this module (candidates for keys.Keys).

    def smsc_key(self, smpp_msgid: str) -> str:
        """Upstream (SMSC) message id -> Jasmin msgid, written on ``ESME_ROK``."""
        return f"{self.store.keys.prefix}:smsc:{smpp_msgid}"

    def parked_dlr_key(self, smpp_msgid: str) -> str:
        """A refunding receipt that arrived before the response mapped its upstream id."""
        return f"{self.store.keys.prefix}:smsc-dlr:{smpp_msgid}"

    async def _redis(self, *args: Any) -> Any:
        # The store's command path: call timeout and StoreUnavailable on trouble.
        return await self.store._command(*args)

    # Dispatch.

    async def handle(self, routing_key: str, body: bytes, properties: Mapping[str, Any]
                     ) -> Outcome:
        """Route one event by its routing key."""
        if routing_key == "dlr.submit_sm_resp":
            return await self.submit_sm_resp(body, properties)
        if routing_key == "dlr.deliver_sm":
            return await self.deliver_sm(body, properties)
        if routing_key.startswith("submit.sm.") and not routing_key.startswith("submit.sm.resp."):
            return await self.submit_sm(body, properties)
        log.warning("unexpected routing key %r: ignored", routing_key)
        return Outcome.IGNORED

    async def _guard(self, what: str, coro: Awaitable[Outcome]) -> Outcome:
        """Drop an event that cannot be read (:class:`Malformed`: raised while reading it,
        :func:`_reading`); anything raised after that, by the store, goes to the caller,
        which retries it."""
        try:
            return await coro
        except Malformed as error:
            log.error("malformed %s event dropped: %s", what, error)
            return Outcome.MALFORMED

    # submit.sm.<cid>

    async def submit_sm(self, body: bytes, properties: Mapping[str, Any]) -> Outcome:
        """Link a tagged SubmitSM's reservation to its Jasmin message id."""
        return await self._guard("submit.sm", self._submit_sm(body, properties))

    async def _submit_sm(self, body: bytes, properties: Mapping[str, Any]) -> Outcome:
        ended = _headers(properties).get(LEASE_END_HEADER)
        if ended is not None:
            # A gateway's lease end marker: every message of the lease was read before it.
            uid, lease_id = _reading(_lease_end_value, ended)
            await self.store.end_lease(uid, lease_id, lazy=True)
            return Outcome.SETTLED
        msgid = _message_id(properties)
        tag = _reading(header_tag, properties)  # our launcher's jasmind repeats the tag there
        if tag is not None:
            self.tags_from_headers += 1
        else:
            tag = _reading(_body_tag, body)
        return await link_tag(self.store, msgid, tag)

    # dlr.submit_sm_resp

    async def submit_sm_resp(self, body: bytes, properties: Mapping[str, Any]) -> Outcome:
        """Commit on ``ESME_ROK``, refund on a final error, wait on a retriable one."""
        return await self._guard("dlr.submit_sm_resp", self._submit_sm_resp(body, properties))

    async def _submit_sm_resp(self, body: bytes, properties: Mapping[str, Any]) -> Outcome:
        msgid = _message_id(properties)
        status = _status(body)
        headers = _headers(properties)
        if status == "ESME_ROK":
            await self.store.settle_message(msgid, True, lazy=True)
            smpp_msgid = _text(headers.get("smpp_msgid") or "").strip()
            if self.dlr_refund_stats and smpp_msgid:
                await self._map_smsc_id(smpp_msgid, msgid)
            return Outcome.SETTLED
        if status in self.retry_statuses and self.unknown_outcome_policy == "wait":
            log.info("submit_sm_resp %s for %s: Jasmin may retry it; left open", status, msgid)
            return Outcome.WAITING
        settled = await self.store.settle_message(msgid, False, reason=status, lazy=True)
        if settled is not None and settled.found and self.metrics is not None:
            self.metrics.refunded("submit_error")
        return Outcome.SETTLED

    async def _map_smsc_id(self, smpp_msgid: str, msgid: str) -> None:
        await self._redis("SET", self.smsc_key(smpp_msgid), msgid, "PX", self.smsc_map_ttl_ms)
        parked = await self._redis("GET", self.parked_dlr_key(smpp_msgid))
        if parked:
            await self._refund_by_dlr(msgid, _text(parked))
            await self._redis("DEL", self.parked_dlr_key(smpp_msgid))

    # dlr.deliver_sm

    async def deliver_sm(self, body: bytes, properties: Mapping[str, Any]) -> Outcome:
        """Refund a message whose delivery receipt stat is in ``dlr_refund_stats``."""
        return await self._guard("dlr.deliver_sm", self._deliver_sm(body, properties))

    async def _deliver_sm(self, body: bytes, properties: Mapping[str, Any]) -> Outcome:
        smpp_msgid = _message_id(properties)
        if not self.dlr_refund_stats:
            return Outcome.IGNORED
        stat = _status(body).upper()
        if stat not in self.dlr_refund_stats:
            return Outcome.IGNORED
        msgid = await self._redis("GET", self.smsc_key(smpp_msgid))
        if not msgid:
            # Park it, then look again: the response may have mapped the id meanwhile.
            await self._redis("SET", self.parked_dlr_key(smpp_msgid), stat,
                              "PX", self.dlr_park_ttl_ms)
            msgid = await self._redis("GET", self.smsc_key(smpp_msgid))
            if not msgid:
                log.debug("DLR %s for %s: no message mapped (yet): parked", stat, smpp_msgid)
                return Outcome.IGNORED
        return await self._refund_by_dlr(_text(msgid), stat)

    async def _refund_by_dlr(self, msgid: str, stat: str) -> Outcome:
        link = await self.store.message_link(msgid)
        if link is None:
            log.info("DLR %s for %s: message not linked to a reservation", stat, msgid)
            return Outcome.IGNORED
        uid, ref = link
        settled = await self.store.refund(uid, ref, reason=f"DLR {stat}", msgid=msgid)
        if settled.found and self.metrics is not None:
            self.metrics.refunded("dlr")
        return Outcome.SETTLED


# -- the consumer ------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueueNames:
    """Our queues. Two gateways using the same names share the work; different names make
    each see every event (the store's idempotency makes both safe)."""

    submit_sm: str = f"{QUEUE_PREFIX}.submit_sm"
    submit_sm_resp: str = f"{QUEUE_PREFIX}.submit_sm_resp"
    deliver_sm: str = f"{QUEUE_PREFIX}.deliver_sm"

    @classmethod
    def with_prefix(cls, prefix: str) -> QueueNames:
        return cls(f"{prefix}.submit_sm", f"{prefix}.submit_sm_resp", f"{prefix}.deliver_sm")

    def event(self, queue: str) -> str:
        """The kind of event ``queue`` holds (``submit_sm``, ``submit_sm_resp`` or
        ``deliver_sm``)."""
        return {self.submit_sm: SUBMIT_SM, self.submit_sm_resp: SUBMIT_SM_RESP,
                self.deliver_sm: DELIVER_SM}[queue]


Handler = Callable[[bytes, Mapping[str, Any]], Awaitable[Outcome]]
Route = tuple[str, tuple[str, ...], Handler]
"""A queue, the routing keys it is bound to, the handler of its events."""


def bindings(queues: QueueNames,
             events: Iterable[str] = ALL_EVENTS) -> list[tuple[str, tuple[str, ...]]]:
    """Our queues for the kinds of ``events`` (default: every queue settlement can use), and
    the routing keys each is bound to on ``messaging``."""
    wanted = frozenset(events)
    return [(queue, keys) for kind, queue, keys in (
        (SUBMIT_SM, queues.submit_sm, SUBMIT_SM_KEYS),
        (SUBMIT_SM_RESP, queues.submit_sm_resp, SUBMIT_SM_RESP_KEYS),
        (DELIVER_SM, queues.deliver_sm, DELIVER_SM_KEYS),
    ) if kind in wanted]


async def declare_marker_route(channel: Any, queues: QueueNames) -> None:
    """Declare ``messaging``, settlement's ``submit_sm`` queue and its binding on ``channel``:
    where a credit lease end marker (:data:`LEASE_END_KEY`) goes. Its publisher does this on
    each connection: after a broker restart the binding is gone (``messaging`` is not durable)
    until someone declares it again (:mod:`jasmin_credits.marker_route`)."""
    await declare_bound_queue(channel, queues.submit_sm, SUBMIT_SM_KEYS)


async def retire_queue(client: Any, queue: str, routing_keys: Iterable[str],
                       channel_id: int = 2) -> int | None:
    """Unbind our durable ``queue`` from ``messaging`` if it exists; answer how many messages
    it still holds once unbound (None: no such queue).

    Used for the queues settlement no longer consumes (all three under ``settlement.link:
    queueing``; ``deliver_sm`` with ``dlr_refund`` emptied): left bound, each would collect
    a copy of every event with nobody reading it. The queue
    itself stays (a settlement process still on ``events`` may be reading it; delete it by
    hand once empty). Runs on a channel of its own (``channel_id``, one per queue retired on
    a connection): asking for a queue that does not exist makes the broker close the
    channel it was asked on.
    """
    channel = await client.channel(channel_id)
    await channel.channel_open()
    try:
        await channel.queue_declare(queue=queue, passive=True)
    except ChannelClosed as error:
        if getattr(error.args[0] if error.args else None, "reply_code", None) != 404:
            raise
        return None  # NOT_FOUND (the broker closed this channel)
    for key in routing_keys:
        await channel.queue_unbind(queue=queue, exchange=EXCHANGE, routing_key=key)
    reply = await channel.queue_declare(queue=queue, passive=True)  # nothing arrives now
    await channel.channel_close()
    return int(reply.message_count)


async def declare_queues(settings: AmqpSettings, queues: QueueNames, *,
                         events: Iterable[str] = ALL_EVENTS,
                         reactor: IReactorTCP | None = None,
                         clock: IReactorTime | None = None) -> bool:
    """Declare our durable queues and their bindings once, and wait for it.

    A gateway does this before Jasmin takes traffic: events Jasmin publishes on its
    non-durable exchange before our queues exist are lost to settlement (the first seconds
    after a first install, or while a separate settlement process starts). Only the queues
    of ``events`` (:func:`events_consumed`) are declared (none at all under
    ``settlement.link: queueing``, and then the broker is not asked); one an earlier
    configuration left is the settlement consumer's to retire (it reads the same config,
    and a consumer still on ``events`` elsewhere keeps it). Answers False (after logging)
    when the broker does not answer within ``settings.connect_timeout``.
    """
    wanted = bindings(queues, events)
    if not wanted:
        return True

    async def declare(client: Any, channel: Any) -> None:
        for queue, keys in wanted:
            await declare_bound_queue(channel, queue, keys)

    connection = AmqpConnection(settings, declare, reactor=reactor, clock=clock)
    connection.start()
    try:
        await connection.when_ready().addTimeout(settings.connect_timeout, connection.clock)
        return True
    except Exception as error:  # noqa: BLE001 - start anyway; the consumer retries
        log.warning("could not declare settlement queues at start: %s", error)
        return False
    finally:
        await connection.shutdown()


class SettlementConsumer:
    """Consumes the kinds of ``events`` (``submit.sm.*``, ``dlr.submit_sm_resp``,
    ``dlr.deliver_sm``: :func:`events_consumed` of the config) from ``messaging`` through our
    own durable queues and feeds them to a :class:`Settlement`; it neither binds nor consumes
    the others (under ``settlement.link: queueing`` none: the gateway handles them in
    process). At each connection it unbinds every queue of ours it does not consume that an
    earlier configuration left (:func:`retire_queue`) and, if
    events wait there, settles them (every handler is idempotent), so a switch from
    ``events`` loses none.

    Acks after the handler returned; on :class:`StoreUnavailable` rejects with requeue after
    ``requeue_delay`` seconds (the message stays unacked meanwhile, so ``prefetch`` also
    bounds the retry rate). An event the handler cannot read is logged and acked (the
    handler's ``MALFORMED``). Any other error (a bug, or a failure of Redis that does not
    look like one) is logged with its traceback and requeued the same way, up to
    ``attempts`` times in all: money is at stake, so a passing fault must not lose the
    event; past that, it is dropped with an error that names it, so that one event that
    always fails cannot hold a slot of ``prefetch`` forever. Up to ``prefetch`` messages per
    queue are handled concurrently. Reconnects by itself (see :class:`AmqpConnection`).
    """

    def __init__(
        self,
        settlement: Settlement,
        amqp: AmqpSettings,
        *,
        queues: QueueNames | None = None,
        prefetch: int = 50,
        requeue_delay: float = 5.0,
        attempts: int = 5,
        events: Iterable[str] = ALL_EVENTS,
        reactor: IReactorTCP | None = None,
        clock: IReactorTime | None = None,
        metrics: Any = None,
    ):
        self.settlement = settlement
        self.metrics = metrics if metrics is not None else NO_METRICS
        self.queues = queues or QueueNames()
        self.events = frozenset(events)
        self.prefetch = prefetch
        self.requeue_delay = requeue_delay
        self.attempts = attempts
        self._failed: dict[tuple[str, str], int] = {}
        """Failed attempts of events that raised an unexpected error, by (routing key,
        message id), until they settle or are dropped."""
        self.connection = AmqpConnection(amqp, self._on_ready, reactor=reactor, clock=clock)
        self.clock = self.connection.clock
        self._inflight: set[Deferred] = set()
        self._timers: set[Any] = set()
        self._stopping = False
        self._started = False
        self.handled: dict[Outcome | str, int] = {}
        """Counts of handled events by outcome, plus ``requeued`` (store unavailable),
        ``retried`` (an unexpected error, requeued) and ``dropped`` (for tests; ``metrics``
        counts the same by event: ``settlement_events_total``)."""

    def _routes(self) -> tuple[list[Route], list[Route]]:
        """The queues to consume, and those to retire: ``(queue, routing keys, handler)``."""
        s = self.settlement
        handlers = {self.queues.submit_sm: s.submit_sm,
                    self.queues.submit_sm_resp: s.submit_sm_resp,
                    self.queues.deliver_sm: s.deliver_sm}
        consumed = bindings(self.queues, self.events)
        routes = [(queue, keys, handlers[queue]) for queue, keys in bindings(self.queues)]
        return ([r for r in routes if r[:2] in consumed],
                [r for r in routes if r[:2] not in consumed])

    def start(self) -> Deferred:
        """Start consuming; the Deferred fires once the first connection consumes (or at
        :meth:`stop`, if that comes first). Reconnection goes on regardless."""
        self._stopping = False
        if not self._started:
            self._started = True
            self.connection.start()
        ready = self.connection.when_ready()
        ready.addCallbacks(lambda _: None, lambda _: None)
        return ready

    def stop(self) -> Deferred:
        """Stop: finish the messages in hand, close the connection, stop reconnecting."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._inflight:
            await DeferredList(list(self._inflight), consumeErrors=True)
        if self._started:
            self._started = False
            await self.connection.shutdown()

    async def _on_ready(self, client: Any, channel: Any) -> None:
        await channel.basic_qos(prefetch_count=self.prefetch)
        routes, retired = self._routes()
        for queue, keys, _ in routes:
            await declare_bound_queue(channel, queue, keys)
        for channel_id, (queue, keys, handler) in enumerate(retired, start=2):
            left = await retire_queue(client, queue, keys, channel_id)
            if left:
                log.warning("%s holds %d events of an earlier settlement.link: settling them; "
                            "the queue is unbound (delete it once empty)", queue, left)
                routes.append((queue, (), handler))
        for queue, _, handler in routes:
            tag = f"{queue}.{uuid.uuid4().hex[:12]}"
            await channel.basic_consume(queue=queue, no_ack=False, consumer_tag=tag)
            incoming = await client.queue(tag)
            Deferred.fromCoroutine(self._consume(incoming, channel, handler,
                                                 self.queues.event(queue)))

    async def _consume(self, incoming: Any, channel: Any, handler: Handler,
                       event: str) -> None:
        while True:
            try:
                message = await incoming.get()
            except (QueueClosed, ClientClosed):
                return
            if self._stopping:
                continue  # left unacked: the broker requeues it when we close
            d = Deferred.fromCoroutine(self._process(channel, message, handler, event))
            self._inflight.add(d)
            d.addBoth(self._done, d)

    def _done(self, result: Any, d: Deferred) -> None:
        self._inflight.discard(d)
        if hasattr(result, "getTraceback"):
            log.error("settlement consumer failure: %s", result.getTraceback())

    def _count(self, event: str, what: Outcome | str) -> None:
        self.handled[what] = self.handled.get(what, 0) + 1
        self.metrics.settlement_event(event, what.value if isinstance(what, Outcome) else what)

    async def _process(self, channel: Any, message: Any, handler: Handler,
                       event: str) -> None:
        content = message.content
        properties = content.properties or {}
        try:
            outcome = await handler(content.body, properties)
        except StoreUnavailable as error:
            log.warning("credit store unavailable (%s): %s requeued in %ss", error,
                        message.routing_key, self.requeue_delay)
            self._count(event, "requeued")
            self._requeue_later(channel, message)
            return
        except Exception:
            if self._retry_failed(message, properties):
                self._count(event, "retried")
                self._requeue_later(channel, message)
                return
            outcome = "dropped"
        if self._failed:
            self._failed.pop((message.routing_key, str(properties.get("message-id"))), None)
        self._count(event, outcome)
        try:
            channel.client.ack(channel, message.delivery_tag)  # amqp.ConsumerClient
        except Exception as error:  # noqa: BLE001 - the broker redelivers; idempotent
            log.info("ack failed (%s): the event will be redelivered", error)

    def _requeue_later(self, channel: Any, message: Any) -> None:
        timer = self.clock.callLater(self.requeue_delay, self._reject, channel,
                                     message.delivery_tag)
        self._timers.add(timer)

    def _retry_failed(self, message: Any, properties: Mapping[str, Any]) -> bool:
        """Log an unexpected error of the handler (from its ``except``); whether to requeue
        the event (True) or drop it (it failed ``attempts`` times)."""
        key = (message.routing_key, str(properties.get("message-id")))
        failed = self._failed.pop(key, 0) + 1
        if failed < self.attempts:
            if len(self._failed) >= 10_000:  # bounded: forgetting only adds attempts
                self._failed.clear()
            self._failed[key] = failed
            log.exception("cannot settle %s %s (attempt %d of %d): requeued in %ss",
                          key[0], key[1], failed, self.attempts, self.requeue_delay)
            return True
        log.exception("cannot settle %s %s after %d attempts: dropped (headers %r)", key[0],
                      key[1], failed, _headers(properties))
        return False

    def _reject(self, channel: Any, delivery_tag: Any) -> None:
        self._timers = {t for t in self._timers if t.active()}
        try:
            d = channel.basic_reject(delivery_tag=delivery_tag, requeue=True)
        except Exception as error:  # noqa: BLE001 - channel gone: the broker requeued it
            log.info("requeue failed (%s): the broker requeues on disconnect", error)
            return
        if isinstance(d, Deferred):
            d.addErrback(lambda f: log.info("requeue failed: %s", f.getErrorMessage()))


__all__ = [
    "ALL_EVENTS", "DELIVER_SM", "DELIVER_SM_KEYS", "JASMIN_RETRY_STATUSES", "PDU_ATTRIBUTE",
    "SUBMIT_SM", "SUBMIT_SM_KEYS", "SUBMIT_SM_RESP", "SUBMIT_SM_RESP_KEYS", "Malformed",
    "InertObject", "Outcome", "QueueNames", "Settlement", "SettlementConsumer", "bindings",
    "declare_marker_route", "declare_queues", "events_consumed", "link_tagged",
    "load_submit_sm", "read_tag", "retire_queue", "tag_pdu",
]
