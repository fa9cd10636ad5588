"""Publisher confirms on jasmind's channel, so that a message or an SMSC's answer the broker
never took is published again.

Jasmin publishes without confirms. What it writes to a connection the broker is closing (a
restart under load) is lost without a trace: a message queued for its connector
(``submit.sm.<cid>``) was told ``ESME_ROK`` and is never sent; for an SMSC's answer
(``dlr.submit_sm_resp``) or receipt (``dlr.deliver_sm``), its message was sent and is then
settled by ``unanswered_policy`` (refunded by default) instead of charged. In confirm mode the
broker acknowledges each publication once it has taken it (routed it and, persistent into a
durable queue, written it). :class:`Confirms` keeps each of those until then;
:class:`~jasmin_credits.amqp_recovery.AmqpRecovery` publishes what is still unconfirmed when
the connection was lost, once it is back, before anything new.

So they reach their queues at least once. One the broker did take, but whose confirm was lost
with the connection, is published twice: settlement settles a message once (by its id); the
connector may send that message twice, and Jasmin's DLR lookup pass a receipt on twice, where
Jasmin alone would have lost them (at least once, as Jasmin already is when it requeues a
message whose answer timed out).

txAMQP's 0-9-1 spec has no ``confirm`` class and no ``basic.nack``: the selection is written as
raw bytes, and the broker's ``basic.ack``/``basic.nack`` are taken from the protocol's frames
before txAMQP decodes them (one bytes comparison per frame, cheaper than its decoder).
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

log = logging.getLogger("jasmin-credits")

REPUBLISHED = ("submit.sm.", "dlr.submit_sm_resp", "dlr.deliver_sm")
"""Routing keys (starts) of the publications kept until confirmed: messages for connectors,
the SMSCs' answers and receipts (not ``submit.sm.resp.<cid>``, see :func:`republished`)."""


def republished(routing_key: str) -> bool:
    """Whether a publication with ``routing_key`` is kept until confirmed (and published
    persistent: :func:`jasmin_credits.amqp_recovery.persistent`)."""
    return routing_key.startswith(REPUBLISHED) and not routing_key.startswith("submit.sm.resp.")


MAX_PENDING = 10_000
"""Unconfirmed publications kept; past that, later ones are not kept (and counted in the
log): a broker that confirms nothing for that long is one jasmind cannot publish to."""

NACK_RETRY = 1.0
"""Seconds before a publication the broker refused (``basic.nack``) is published again."""

_METHOD_FRAME = 1
_FRAME_END = b"\xce"
_BASIC_ACK = struct.pack("!HH", 60, 80)
_BASIC_NACK = struct.pack("!HH", 60, 120)
_TAG = struct.Struct("!QB")  # delivery tag, then the bits (multiple is the first)


def select_frame(channel: int) -> bytes:
    """``confirm.select`` with ``nowait`` set, on ``channel`` (the broker answers nothing)."""
    return struct.pack("!BHIHHB", _METHOD_FRAME, channel, 5, 85, 10, 1) + _FRAME_END


class Confirms:
    """Confirm mode on ``channel`` (txAMQP's, of the protocol ``client``), keeping the
    publications :data:`REPUBLISHED` names until the broker confirms them.

    ``republish`` takes a refused publication's ``basic_publish`` arguments
    :data:`NACK_RETRY` seconds later."""

    def __init__(self, client: Any, channel: Any, clock: IReactorTime,
                 republish: Callable[..., Any]):
        self.client = client
        self.channel = channel
        self.clock = clock
        self.republish = republish
        self.published = 0
        """Publications on the channel: the broker numbers its confirms the same way."""
        self.pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.not_kept = 0
        self._channel_bytes = struct.pack("!H", channel.id)

    def select(self) -> None:
        """Put the channel in confirm mode, before anything is published on it."""
        client, channel = self.client, self.channel
        unpack, receive = client._unpack_frame, client.frame_received

        def unpack_frame(packet: bytes) -> Any:
            if (packet[0] == _METHOD_FRAME and packet[1:3] == self._channel_bytes
                    and packet[7:11] in (_BASIC_ACK, _BASIC_NACK)):
                tag, bits = _TAG.unpack_from(packet, 11)
                self._confirmed(tag, bits & 1, packet[7:11] == _BASIC_ACK)
                return None
            return unpack(packet)

        def frame_received(frame: Any) -> Any:
            return None if frame is None else receive(frame)

        basic_publish = channel.basic_publish

        def counting_publish(**args: Any) -> Any:
            self.published += 1
            number = self.published
            if republished(args.get("routing_key", "")):
                if len(self.pending) < MAX_PENDING:
                    self.pending[number] = args
                else:
                    self.not_kept += 1
            result = basic_publish(**args)
            if isinstance(result, Deferred) and result.called and isinstance(
                    result.result, Failure):
                # Never sent (the channel is closed): the caller sees the failure (Jasmin
                # then refuses the message), so it must not go later; the broker did not
                # number it either.
                self.pending.pop(number, None)
                self.published -= 1
            return result

        client._unpack_frame, client.frame_received = unpack_frame, frame_received
        channel.basic_publish = counting_publish
        client.transport.write(select_frame(channel.id))

    def _confirmed(self, tag: int, multiple: int, ack: bool) -> None:
        pending = self.pending
        if multiple:
            settled = []
            while pending and next(iter(pending)) <= tag:
                settled.append(pending.popitem(last=False)[1])
        else:
            one = pending.pop(tag, None)
            settled = [] if one is None else [one]
        if not ack and settled:
            log.warning("RabbitMQ refused %d of Jasmin's publications (basic.nack): "
                        "publishing them again in %.0f s", len(settled), NACK_RETRY)
            self.clock.callLater(NACK_RETRY, self._republish, settled)

    def _republish(self, publications: list[dict[str, Any]]) -> None:
        for args in publications:
            self.republish(**args)

    def unconfirmed(self) -> list[dict[str, Any]]:
        """The publications the broker has not confirmed, in order; forgets them (for a
        channel whose connection is gone)."""
        if self.not_kept:
            log.warning("%d of Jasmin's publications were unconfirmed and "
                        "not kept (at most %d are)", self.not_kept, MAX_PENDING)
            self.not_kept = 0
        publications = list(self.pending.values())
        self.pending.clear()
        return publications


__all__ = ["Confirms", "REPUBLISHED", "republished", "select_frame"]
