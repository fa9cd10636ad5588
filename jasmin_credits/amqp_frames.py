"""The frames of a ``basic.deliver``, decoded straight from the received bytes.

txAMQP decodes every frame through a ``Codec`` over a ``BytesIO``: a method call per field
and per byte string, and a generic loop over the content properties. Once the rest of their
path was short (:class:`~jasmin_credits.amqp.ConsumerClient`), that decoding was about 45%
of the CPU jasmin-credits-settled spends per Jasmin event (docs/benchmarks.md).
:class:`DeliveryDecoder` reads the three kinds of frame a delivery is made of (the
``basic.deliver`` method, the content header, the body) into the very objects txAMQP builds
(``Method``, ``Header``, body bytes), with txAMQP's value types: a short or long string is a
``str`` when it is UTF-8, else ``bytes``; a table holds txAMQP's four field types (``S``
string, ``I`` unsigned 32-bit, ``F`` table, ``t`` boolean). Anything else (another class, a
field type this module does not read, a truncated payload) is decoded by txAMQP's own
``Header.decode``, so the outcome, value or error, is txAMQP's (AMQP 0-9-1, sections 2.3.5,
4.2.3 and 4.2.6).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any

from txamqp.codec import Codec
from txamqp.connection import Header, Method

FRAME_HEAD = struct.Struct("!BHI")
"""Frame type, channel, payload size; the payload and the frame-end octet follow."""
FRAME_END = 0xCE
METHOD, HEADER, BODY = 1, 2, 3

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_CONTENT_HEAD = struct.Struct("!HHQ")  # class id, weight, body size

Decoder = Callable[[bytes, int, int], tuple[Any, int]]
"""``(buffer, position, limit) -> (value, next position)``; raises ``_Malformed``."""


class _Malformed(Exception):
    """The payload is not what this module reads: txAMQP decodes it instead."""


def _text(raw: bytes) -> str | bytes:
    try:  # txAMQP's "opportunistic" decoding of every string
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _string(buf: bytes, start: int, size: int, limit: int) -> tuple[str | bytes, int]:
    end = start + size
    if end > limit:
        raise _Malformed
    return _text(buf[start:end]), end


def shortstr(buf: bytes, pos: int, limit: int) -> tuple[str | bytes, int]:
    if pos >= limit:
        raise _Malformed
    return _string(buf, pos + 1, buf[pos], limit)


def longstr(buf: bytes, pos: int, limit: int) -> tuple[str | bytes, int]:
    return _string(buf, pos + 4, _unsigned(_U32, buf, pos, limit), limit)


def _unsigned(form: struct.Struct, buf: bytes, pos: int, limit: int) -> int:
    if pos + form.size > limit:
        raise _Malformed
    return form.unpack_from(buf, pos)[0]


def octet(buf: bytes, pos: int, limit: int) -> tuple[int, int]:
    return _unsigned(_BYTE, buf, pos, limit), pos + 1


def short(buf: bytes, pos: int, limit: int) -> tuple[int, int]:
    return _unsigned(_U16, buf, pos, limit), pos + 2


def long(buf: bytes, pos: int, limit: int) -> tuple[int, int]:
    return _unsigned(_U32, buf, pos, limit), pos + 4


def longlong(buf: bytes, pos: int, limit: int) -> tuple[int, int]:
    return _unsigned(_U64, buf, pos, limit), pos + 8


_BYTE = struct.Struct("!B")


def table(buf: bytes, pos: int, limit: int) -> tuple[dict[Any, Any], int]:
    """A field table, as txAMQP's ``Codec.decode_table`` reads it."""
    end = pos + 4 + _unsigned(_U32, buf, pos, limit)
    if end > limit:
        raise _Malformed
    pos += 4
    result: dict[Any, Any] = {}
    while pos < end:
        key, pos = shortstr(buf, pos, end)
        if pos >= end:
            raise _Malformed
        kind = buf[pos]
        pos += 1
        if kind == 0x53:  # S
            value, pos = longstr(buf, pos, end)
        elif kind == 0x49:  # I
            value, pos = long(buf, pos, end)
        elif kind == 0x46:  # F
            value, pos = table(buf, pos, end)
        elif kind == 0x74:  # t
            number, pos = octet(buf, pos, end)
            value = number != 0
        else:  # txAMQP refuses other types (ValueError): let it say so
            raise _Malformed
        result[key] = value
    return result, pos


_DECODERS: dict[str, Decoder] = {"shortstr": shortstr, "longstr": longstr, "table": table,
                                 "octet": octet, "short": short, "long": long,
                                 "longlong": longlong, "timestamp": longlong}

_DELIVER_FIELDS = ["shortstr", "longlong", "bit", "shortstr", "shortstr"]


class DeliveryDecoder:
    """Decodes ``basic.deliver`` methods and ``basic`` content headers of a txAMQP ``spec``.

    Payload positions are ``start`` (after the 7-byte frame head) to ``end`` (the frame-end
    octet) in ``buf``.
    """

    def __init__(self, spec: Any):
        self.spec = spec
        self.basic = spec.classes.byname["basic"]
        self.deliver = self.basic.methods.byname["deliver"]
        self._deliver_ids = struct.pack("!HH", self.basic.id, self.deliver.id)
        self._reads_deliver = [f.type for f in self.deliver.fields] == _DELIVER_FIELDS
        self._properties = [(str(f.name), _DECODERS.get(f.type)) for f in self.basic.fields]
        self._reads_header = all(decode for _, decode in self._properties)

    def deliver_method(self, buf: bytes, start: int, end: int) -> Method | None:
        """The ``basic.deliver`` method of this method payload; None for any other method
        (or a payload this cannot read: txAMQP's path decodes it)."""
        if not self._reads_deliver or buf[start:start + 4] != self._deliver_ids:
            return None
        try:
            tag, pos = shortstr(buf, start + 4, end)
            delivery_tag, pos = longlong(buf, pos, end)
            bits, pos = octet(buf, pos, end)
            exchange, pos = shortstr(buf, pos, end)
            routing_key, pos = shortstr(buf, pos, end)
        except _Malformed:
            return None
        return Method(self.deliver, tag, delivery_tag, bits & 1 != 0, exchange, routing_key)

    def header(self, buf: bytes, start: int, end: int) -> Header:
        """The content header of this header payload (txAMQP's decoding but for speed)."""
        if self._reads_header:
            try:
                return self._basic_header(buf, start, end)
            except _Malformed:
                pass
        # txAMQP reads the size field before the payload (``decode_longbytes``).
        return Header.decode(self.spec, Codec(BytesIO(bytes(buf[start - 4:end]))))

    def _basic_header(self, buf: bytes, start: int, end: int) -> Header:
        if start + _CONTENT_HEAD.size > end:
            raise _Malformed
        class_id, weight, size = _CONTENT_HEAD.unpack_from(buf, start)
        if class_id != self.basic.id:
            raise _Malformed
        pos = start + _CONTENT_HEAD.size
        present: list[int] = []
        while True:  # 15 property bits per word; bit 0 says another word follows
            flags, pos = short(buf, pos, end)
            present.extend(flags >> shift & 1 for shift in range(15, 0, -1))
            if not flags & 1:
                break
        properties: dict[str, Any] = {}
        for bit, (name, decode) in zip(present, self._properties, strict=False):
            if bit:
                properties[name], pos = decode(buf, pos, end)  # type: ignore[misc]
        return Header(self.basic, weight, size, **properties)


__all__ = ["BODY", "FRAME_END", "FRAME_HEAD", "HEADER", "METHOD", "DeliveryDecoder"]
