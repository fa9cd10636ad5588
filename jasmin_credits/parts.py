"""How many SMS parts a message costs.

Counting follows what Jasmin sends upstream. Jasmin's HTTP API splits a long message with
``SMPPOperationFactory.SubmitSM``: 160 characters in one part or 153 per part for data
codings 0 and 1, 70/67 UTF-16 code units for UCS-2 (8), and 140/134 octets for every other
data coding (3, 6, 7, 10 as 8-bit text; 2, 4, 5, 9, 13, 14 as "16-bit", which is the same
octet count). Like Jasmin, we divide lengths by the per-part size, so an escape sequence or
a surrogate pair that straddles two parts is not pushed whole into the next one.

A PDU that already carries concatenation data (a UDH with IEI 0x00 or 0x08, or the SAR
TLVs) is one part of a longer message and costs one part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smpp.pdu import constants

GSM7 = "gsm7"
UCS2 = "ucs2"
EIGHT_BIT = "8bit"

# (characters in a single part, characters per part when concatenated)
_LIMITS = {GSM7: (160, 153), UCS2: (70, 67), EIGHT_BIT: (140, 134)}

# GSM 03.38 default alphabet, in code order 0x00..0x7F, without ESC (0x1B).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# GSM 03.38 extension table: each is sent as ESC + char, two septets.
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM_ALL = _GSM_BASIC | _GSM_EXTENSION
# The extension characters that latin-1/ASCII bytes can hold (no euro sign).
_EXTENSION_BYTES = tuple(c.encode("latin-1") for c in _GSM_EXTENSION if c != "€")

_UCS2_CODING = 0x08
_OCTET_CODINGS = frozenset({2, 3, 4, 5, 6, 7, 9, 10, 13, 14})
_GSM_CLASS_SCHEME = 0xF0
_GSM_CLASS_8BIT = 0x04
_UDHI = constants.esm_class_gsm_features_name_map["UDHI_INDICATOR_SET"]
_IEI_CONCAT_8BIT_REF = 0x00
_IEI_CONCAT_16BIT_REF = 0x08
_MAX_CHAIN = 255  # a UDH counts parts in one octet


@dataclass(frozen=True)
class ConcatInfo:
    """Concatenation data of one part: message reference, part count, this part's number."""

    ref: int
    total: int
    seq: int


@dataclass(frozen=True)
class Parts:
    """What a message costs: its encoding (``gsm7``, ``ucs2`` or ``8bit``) and part count.

    ``concat`` is set when the PDU counted is itself one part of a concatenated message.
    """

    encoding: str
    parts: int
    concat: ConcatInfo | None = None


def count_text(text: str) -> Parts:
    """Count the parts of ``text`` sent in the cheapest encoding that can carry it.

    GSM 7-bit when every character is in the default alphabet or the extension table
    (extension characters take two septets), else UCS-2 counted in UTF-16 code units, so
    an emoji takes two. Empty text is one part.
    """
    if _GSM_ALL.issuperset(text):
        septets = len(text) + sum(text.count(c) for c in _GSM_EXTENSION)
        return Parts(GSM7, _split(septets, GSM7))
    units = len(text.encode("utf-16-le")) // 2
    return Parts(UCS2, _split(units, UCS2))


def count_pdu(pdu: Any) -> Parts:
    """Count the parts of one SubmitSM as it will be sent.

    A PDU carrying concatenation data (UDH or SAR TLVs) is one part and says so in
    ``concat``; a malformed UDH is ignored and the whole payload is counted. Otherwise the
    parts follow the payload length (``short_message``, or ``message_payload`` when the
    former is empty) under the data coding's limits.

    For data codings 0 and 1, bytes holding an ESC (0x1B) are GSM 03.38 as Jasmin's HTTP
    API produces it, one byte per septet. Other bytes are read as latin-1/ASCII, where
    ``^{}\\[~]|`` and form feed take two septets once the SMSC converts them; the same
    bytes read as GSM (``ä``, ``ö``...) would take one, so we may count one part too many.
    """
    params = pdu.params
    payload = _as_bytes(params.get("short_message")) or _as_bytes(params.get("message_payload"))
    encoding = encoding_of(params.get("data_coding"))
    concat = _sar(params)
    header = 0
    if _has_udhi(params.get("esm_class")):
        parsed = _parse_udh(payload)
        if parsed is not None:
            udh_concat, header = parsed
            concat = udh_concat or concat
    if concat is not None:
        return Parts(encoding, 1, concat)
    return Parts(encoding, _split(_length(payload, header, encoding), encoding))


def count_http_chain(pdu: Any) -> Parts:
    """Count the parts of a message Jasmin's HTTP API built as a ``nextPdu`` chain.

    The chain is what Jasmin sends, already cut to ``long_content_max_parts``, so its
    length is the part count.
    """
    parts = 1
    node = getattr(pdu, "nextPdu", None)
    while node is not None and parts < _MAX_CHAIN:
        parts += 1
        node = getattr(node, "nextPdu", None)
    return Parts(encoding_of(pdu.params.get("data_coding")), parts)


def encoding_of(data_coding: Any) -> str:
    """Map a data_coding (int, smpp.pdu ``DataCoding`` or None) to how its parts are counted."""
    value = data_coding_value(data_coding)
    if value == _UCS2_CODING:
        return UCS2
    if value & _GSM_CLASS_SCHEME == _GSM_CLASS_SCHEME:
        return EIGHT_BIT if value & _GSM_CLASS_8BIT else GSM7
    if value in _OCTET_CODINGS:
        return EIGHT_BIT
    # Jasmin sends any other value as 7-bit.
    return GSM7


def data_coding_value(data_coding: Any) -> int:
    """The SMPP integer of a data_coding given as int, smpp.pdu ``DataCoding`` or None.

    Enum members are compared by name: Jasmin pickles PDUs between processes, and unpickled
    smpp.pdu enum members are not equal to the module's own.
    """
    if isinstance(data_coding, int) and not isinstance(data_coding, bool):
        return data_coding
    scheme = getattr(getattr(data_coding, "scheme", None), "name", None)
    data = getattr(data_coding, "schemeData", None)
    if scheme == "RAW" and isinstance(data, int):
        return data
    if scheme == "DEFAULT":
        return constants.data_coding_default_name_map.get(getattr(data, "name", None), 0)
    if scheme == "GSM_MESSAGE_CLASS":
        coding = getattr(getattr(data, "msgCoding", None), "name", None)
        klass = getattr(getattr(data, "msgClass", None), "name", None)
        return (
            _GSM_CLASS_SCHEME
            | constants.data_coding_gsm_message_coding_name_map.get(coding, 0)
            | constants.data_coding_gsm_message_class_name_map.get(klass, 0)
        )
    return 0


def _split(length: int, encoding: str) -> int:
    single, multi = _LIMITS[encoding]
    return 1 if length <= single else -(-length // multi)


def _length(payload: bytes, header: int, encoding: str) -> int:
    """Length of ``payload`` in the units ``_LIMITS`` uses; its first ``header`` octets are UDH."""
    body = payload[header:]
    if encoding == UCS2:
        return -(-len(payload) // 2)
    if encoding == EIGHT_BIT:
        return len(payload)
    udh_septets = -(-header * 8 // 7)
    if b"\x1b" in body:
        return udh_septets + len(body)
    return udh_septets + len(body) + sum(body.count(c) for c in _EXTENSION_BYTES)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()  # as smpp.pdu's PDU constructor does
    return b""


def _has_udhi(esm_class: Any) -> bool:
    if isinstance(esm_class, int):
        return bool(esm_class & _UDHI)
    features = getattr(esm_class, "gsmFeatures", None) or ()
    return any(getattr(f, "name", None) == "UDHI_INDICATOR_SET" for f in features)


def _sar(params: dict[str, Any]) -> ConcatInfo | None:
    values = (
        params.get("sar_msg_ref_num"),
        params.get("sar_total_segments"),
        params.get("sar_segment_seqnum"),
    )
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    return _concat(*values)


def _concat(ref: int, total: int, seq: int) -> ConcatInfo | None:
    if total < 1 or not 1 <= seq <= total:
        return None
    return ConcatInfo(ref, total, seq)


def _parse_udh(payload: bytes) -> tuple[ConcatInfo | None, int] | None:
    """Return the concatenation data and the header length in octets, or None if malformed."""
    if not payload:
        return None
    end = 1 + payload[0]
    if end > len(payload):
        return None
    concat = None
    pos = 1
    while pos < end:
        if pos + 2 > end:
            return None
        iei, size = payload[pos], payload[pos + 1]
        data = payload[pos + 2 : pos + 2 + size]
        if pos + 2 + size > end:
            return None
        if iei == _IEI_CONCAT_8BIT_REF:
            if size != 3 or (concat := _concat(data[0], data[1], data[2])) is None:
                return None
        elif iei == _IEI_CONCAT_16BIT_REF:
            if size != 4 or (concat := _concat(data[0] << 8 | data[1], data[2], data[3])) is None:
                return None
        pos += 2 + size
    return concat, end
