"""Tests for jasmin_credits.parts: how many SMS parts a text or a SubmitSM costs."""

from __future__ import annotations

import pickle

import messaging.sms  # noqa: F401 - registers the 'gsm0338' codec Jasmin's HTTP API uses
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jasmin.protocols.smpp.operations import SMPPOperationFactory
from messaging.sms.gsm0338 import GSM_BASIC_CHARSET, GSM_EXT_CHARSET
from smpp.pdu.operations import SubmitSM
from smpp.pdu.pdu_types import (
    DataCoding,
    DataCodingDefault,
    DataCodingGsmMsg,
    DataCodingGsmMsgClass,
    DataCodingGsmMsgCoding,
    DataCodingScheme,
    EsmClass,
    EsmClassGsmFeatures,
    EsmClassMode,
    EsmClassType,
)

from jasmin_credits.parts import (
    _GSM_BASIC,
    _GSM_EXTENSION,
    EIGHT_BIT,
    GSM7,
    UCS2,
    ConcatInfo,
    Parts,
    count_http_chain,
    count_pdu,
    count_text,
    data_coding_value,
    encoding_of,
)

UDHI = EsmClass(
    EsmClassMode.DEFAULT, EsmClassType.DEFAULT, [EsmClassGsmFeatures.UDHI_INDICATOR_SET]
)
UCS2_CODING = DataCoding(schemeData=DataCodingDefault.UCS2)


def submit(short_message=b"", data_coding=0, **params):
    """A SubmitSM as Jasmin hands it to an interceptor."""
    return SubmitSM(
        destination_addr=b"447911123456",
        short_message=short_message,
        data_coding=data_coding,
        **params,
    )


def jasmin_chain_length(pdu):
    """Count PDUs the way Jasmin's own /rate endpoint does."""
    count = 1
    while hasattr(pdu, "nextPdu"):
        pdu = pdu.nextPdu
        count += 1
    return count


def test_gsm_alphabet_matches_jasmins_codec():
    """Our GSM 03.38 tables are exactly the ones of the codec Jasmin encodes with."""
    assert set(GSM_BASIC_CHARSET.values()) == _GSM_BASIC
    assert set(GSM_EXT_CHARSET.values()) == _GSM_EXTENSION


# --- count_text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", 1),
        ("Your code is 4821. Don't share it with anyone!", 1),
        ("Prix: 12£ / 15$ / 10¥ à Genève, Ñandu Øresund ÆØÅ ¿Qué? ¡Si! §4 _x_ @home", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("a" * 400, 3),
    ],
)
def test_count_text_gsm(text, parts):
    """GSM default-alphabet text counts 160 in one part, 153 per part beyond."""
    assert count_text(text) == Parts(GSM7, parts)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a" * 158 + "€", 1),
        ("a" * 159 + "€", 2),
        ("{" * 80, 1),
        ("{" * 80 + "a", 2),
        ("a" * 304 + "[", 2),
        ("a" * 305 + "]", 3),
        ("a" * 158 + "\f", 1),
        ("a" * 159 + "\f", 2),
        ("^{}\\[~]|€" * 17, 2),
        ("^{}\\[~]|€" * 17 + "a", 3),
    ],
)
def test_count_text_extension_chars_take_two_septets(text, parts):
    """Extension characters (^{}\\[~]|€ and form feed) count 2 septets at the 160/153 edges."""
    assert count_text(text) == Parts(GSM7, parts)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("Καλημέρα κόσμε", 1),
        ("مرحبا بالعالم", 1),
        ("ç", 1),
        ("α" * 70, 1),
        ("α" * 71, 2),
        ("ب" * 134, 2),
        ("ب" * 135, 3),
        ("😀" * 35, 1),
        ("😀" * 36, 2),
        ("a" * 69 + "😀", 2),
    ],
)
def test_count_text_ucs2(text, parts):
    """Text outside GSM 03.38 is UCS-2: 70 / 67 UTF-16 code units, an emoji counting 2."""
    assert count_text(text) == Parts(UCS2, parts)


def test_count_text_greek_capitals_in_gsm_stay_gsm():
    """The Greek capitals of the GSM alphabet (ΔΦΓΛΩΠΨΣΘΞ) do not force UCS-2."""
    assert count_text("ΔΦΓΛΩΠΨΣΘΞ" * 16) == Parts(GSM7, 1)


# --- data codings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_coding", "value", "encoding"),
    [
        (None, 0, GSM7),
        (0, 0, GSM7),
        (1, 1, GSM7),
        (3, 3, EIGHT_BIT),
        (4, 4, EIGHT_BIT),
        (8, 8, UCS2),
        (0x11, 0x11, GSM7),
        (DataCoding(), 0, GSM7),
        (DataCoding(schemeData=DataCodingDefault.IA5_ASCII), 1, GSM7),
        (DataCoding(schemeData=DataCodingDefault.LATIN_1), 3, EIGHT_BIT),
        (DataCoding(schemeData=DataCodingDefault.OCTET_UNSPECIFIED_COMMON), 4, EIGHT_BIT),
        (UCS2_CODING, 8, UCS2),
        (DataCoding(DataCodingScheme.RAW, 8), 8, UCS2),
        (
            DataCoding(
                DataCodingScheme.GSM_MESSAGE_CLASS,
                DataCodingGsmMsg(DataCodingGsmMsgCoding.DATA_8BIT, DataCodingGsmMsgClass.CLASS_1),
            ),
            0xF5,
            EIGHT_BIT,
        ),
        (
            DataCoding(
                DataCodingScheme.GSM_MESSAGE_CLASS,
                DataCodingGsmMsg(
                    DataCodingGsmMsgCoding.DEFAULT_ALPHABET, DataCodingGsmMsgClass.CLASS_2
                ),
            ),
            0xF2,
            GSM7,
        ),
        ("garbage", 0, GSM7),
    ],
)
def test_data_coding_value_and_encoding(data_coding, value, encoding):
    """Ints, smpp.pdu DataCoding objects and None map to the SMPP value and counting class."""
    assert data_coding_value(data_coding) == value
    assert encoding_of(data_coding) == encoding


def test_data_coding_survives_pickling():
    """A DataCoding unpickled from Jasmin's PB/AMQP hops is still recognised by name."""
    pdu = pickle.loads(pickle.dumps(submit(b"\x00a" * 71, UCS2_CODING)))
    assert count_pdu(pdu) == Parts(UCS2, 2)


# --- count_pdu by length ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("short_message", "data_coding", "expected"),
    [
        (b"a" * 160, 0, Parts(GSM7, 1)),
        (b"a" * 161, 0, Parts(GSM7, 2)),
        (b"a" * 159 + b"{", 0, Parts(GSM7, 2)),
        (b"a" * 158 + b"{", 0, Parts(GSM7, 1)),
        (b"a" * 158 + b"|", 1, Parts(GSM7, 1)),
        (b"a" * 159 + b"~", 1, Parts(GSM7, 2)),
        (b"\x1b(" * 80, 0, Parts(GSM7, 1)),
        (b"\x1b(" * 80 + b"a", 0, Parts(GSM7, 2)),
        (b"\x1b<" + b"{" * 158, 0, Parts(GSM7, 1)),
        (b"\xe9" * 160, 0, Parts(GSM7, 1)),
        ("a" * 161, 0, Parts(GSM7, 2)),
        (None, 0, Parts(GSM7, 1)),
        (b"\x00a" * 70, 8, Parts(UCS2, 1)),
        (b"\x00a" * 71, 8, Parts(UCS2, 2)),
        (b"\x00a" * 134, UCS2_CODING, Parts(UCS2, 2)),
        (b"\x00a" * 135, UCS2_CODING, Parts(UCS2, 3)),
        (b"\xff" * 140, 4, Parts(EIGHT_BIT, 1)),
        (b"\xff" * 141, 4, Parts(EIGHT_BIT, 2)),
        (b"\xff" * 268, 2, Parts(EIGHT_BIT, 2)),
        (b"\xff" * 269, 2, Parts(EIGHT_BIT, 3)),
        (b"e" * 140, 3, Parts(EIGHT_BIT, 1)),
        (b"e" * 141, 3, Parts(EIGHT_BIT, 2)),
    ],
)
def test_count_pdu_by_length(short_message, data_coding, expected):
    """Without concatenation data, parts follow the payload length under its data coding."""
    assert count_pdu(submit(short_message, data_coding)) == expected


def test_count_pdu_uses_message_payload_when_short_message_is_empty():
    """A long message sent in the message_payload TLV counts by that TLV's length."""
    pdu = submit(b"", 0, message_payload=b"a" * 400)
    assert count_pdu(pdu) == Parts(GSM7, 3)


# --- count_pdu with concatenation data --------------------------------------------------


@pytest.mark.parametrize(
    ("short_message", "concat"),
    [
        (b"\x05\x00\x03\x2a\x03\x02" + b"a" * 153, ConcatInfo(42, 3, 2)),
        (b"\x06\x08\x04\x12\x34\x02\x01" + b"a" * 153, ConcatInfo(0x1234, 2, 1)),
        (
            b"\x0b\x05\x04\x0b\x84\x23\xf0\x00\x03\x07\x02\x02" + b"a" * 120,
            ConcatInfo(7, 2, 2),
        ),
        (b"\x05\x00\x03\xff\x01\x01", ConcatInfo(255, 1, 1)),
    ],
)
def test_count_pdu_udh_concat_is_one_part(short_message, concat):
    """A PDU with a concatenation UDH (IEI 0x00 or 0x08) is one part carrying ref/total/seq."""
    assert count_pdu(submit(short_message, 0, esm_class=UDHI)) == Parts(GSM7, 1, concat)


def test_count_pdu_udhi_as_int_esm_class():
    """An esm_class given as a raw int with 0x40 set is read as UDHI too."""
    pdu = submit(b"\x05\x00\x03\x01\x02\x02" + b"\x00a" * 67, 8, esm_class=0x40)
    assert count_pdu(pdu) == Parts(UCS2, 1, ConcatInfo(1, 2, 2))


def test_count_pdu_sar_is_one_part():
    """A PDU with the SAR TLVs is one part carrying ref/total/seq."""
    pdu = submit(b"a" * 153, 0, sar_msg_ref_num=300, sar_total_segments=4, sar_segment_seqnum=3)
    assert count_pdu(pdu) == Parts(GSM7, 1, ConcatInfo(300, 4, 3))


def test_count_pdu_incomplete_sar_counts_by_length():
    """SAR TLVs missing one value are not concatenation data; length decides."""
    pdu = submit(b"a" * 200, 0, sar_msg_ref_num=1, sar_total_segments=2)
    assert count_pdu(pdu) == Parts(GSM7, 2)


def test_count_pdu_udh_without_concat_counts_header_and_body():
    """A UDH without concatenation (port addressing) takes room from the single part."""
    header = b"\x06\x05\x04\x0b\x84\x23\xf0"
    assert count_pdu(submit(header + b"\xff" * 133, 4, esm_class=UDHI)) == Parts(EIGHT_BIT, 1)
    assert count_pdu(submit(header + b"\xff" * 134, 4, esm_class=UDHI)) == Parts(EIGHT_BIT, 2)
    # 7 octets of header are 8 septets: 8 + 152 = 160
    assert count_pdu(submit(header + b"a" * 152, 0, esm_class=UDHI)) == Parts(GSM7, 1)
    assert count_pdu(submit(header + b"a" * 153, 0, esm_class=UDHI)) == Parts(GSM7, 2)


@pytest.mark.parametrize(
    "short_message",
    [
        b"\xff" + b"a" * 200,  # header longer than the payload
        b"\x06\x00\x04\x01\x02\x01\x00" + b"a" * 194,  # 8-bit concat IE with length 4
        b"\x05\x00\x05\x01\x02\x01" + b"a" * 195,  # IE overruns the header
        b"\x04\x00\x02\x01\x02" + b"a" * 196,  # 8-bit concat IE with length 2
        b"\x05\x00\x03\x01\x02\x00" + b"a" * 195,  # part number 0
        b"\x05\x00\x03\x01\x02\x03" + b"a" * 195,  # part 3 of 2
        b"\x05\x00\x03\x01\x00\x00" + b"a" * 195,  # 0 parts
        b"\x02\x00" + b"a" * 199,  # IE header cut short
    ],
)
def test_count_pdu_malformed_udh_counts_by_length(short_message):
    """A malformed UDH gives no concatenation data and the whole payload is counted."""
    assert count_pdu(submit(short_message, 0, esm_class=UDHI)) == Parts(GSM7, 2)


def test_count_pdu_udh_longer_than_a_short_payload():
    """A header cut short by the end of the payload is malformed; the bytes are counted."""
    assert count_pdu(submit(b"\x05\x00\x03\x01", 0, esm_class=UDHI)) == Parts(GSM7, 1)


def test_count_pdu_empty_payload_with_udhi():
    """UDHI set on an empty message does not crash and costs one part."""
    assert count_pdu(submit(b"", 0, esm_class=UDHI)) == Parts(GSM7, 1)


@given(
    payload=st.binary(max_size=400),
    data_coding=st.sampled_from([0, 1, 3, 4, 8, None, UCS2_CODING]),
    udhi=st.booleans(),
)
def test_count_pdu_never_crashes(payload, data_coding, udhi):
    """Any payload, with or without UDHI, counts to at least one part without raising."""
    params = {"esm_class": UDHI} if udhi else {}
    parts = count_pdu(submit(payload, data_coding, **params))
    assert parts.parts >= 1
    assert parts.concat is None or 1 <= parts.concat.seq <= parts.concat.total


# --- agreement with Jasmin's own splitting ----------------------------------------------

AGREEMENT_CASES = [
    ("a" * 160, 0, 1),
    ("a" * 161, 0, 2),
    ("a" * 400, 0, 3),
    ("{" * 80, 0, 1),
    ("{" * 81, 0, 2),
    ("a" * 158 + "€", 0, 1),
    ("a" * 159 + "€", 0, 2),
    ("€" * 153, 0, 2),
    ("α" * 70, 8, 1),
    ("α" * 71, 8, 2),
    ("😀" * 35, 8, 1),
    ("😀" * 36, 8, 2),
    ("مرحبا " * 40, 8, 4),
]


def _encode(text, data_coding):
    """Encode content as Jasmin's HTTP API does: GSM 03.38 for coding 0, else as given."""
    return text.encode("gsm0338") if data_coding == 0 else text.encode("utf-16-be")


@pytest.mark.parametrize("split", ["sar", "udh"])
@pytest.mark.parametrize(("text", "data_coding", "parts"), AGREEMENT_CASES)
def test_counts_agree_with_jasmin_splitting(split, text, data_coding, parts):
    """count_text, count_pdu and count_http_chain all agree with the PDUs Jasmin builds."""
    factory = SMPPOperationFactory(long_content_max_parts=10, long_content_split=split)
    short_message = _encode(text, data_coding)
    chain = factory.SubmitSM(
        short_message=short_message, data_coding=data_coding, destination_addr=b"447911123456"
    )
    assert jasmin_chain_length(chain) == parts
    encoding = UCS2 if data_coding == 8 else GSM7

    assert count_http_chain(chain) == Parts(encoding, parts)
    assert count_text(text) == Parts(encoding, parts)
    assert count_pdu(submit(short_message, data_coding)) == Parts(encoding, parts)

    node, seq = chain, 1
    while node is not None:
        counted = count_pdu(node)
        assert counted.parts == 1
        if parts > 1:
            assert (counted.concat.total, counted.concat.seq) == (parts, seq)
        node, seq = getattr(node, "nextPdu", None), seq + 1


@pytest.mark.parametrize(("size", "parts"), [(140, 1), (141, 2), (268, 2), (269, 3)])
@pytest.mark.parametrize("data_coding", [3, 4])
def test_octet_codings_agree_with_jasmin_splitting(data_coding, size, parts):
    """Latin-1 (3) and binary (4) count 140 / 134 octets, as Jasmin splits them."""
    factory = SMPPOperationFactory(long_content_max_parts=10)
    chain = factory.SubmitSM(short_message=b"e" * size, data_coding=data_coding)
    assert jasmin_chain_length(chain) == parts
    assert count_http_chain(chain) == Parts(EIGHT_BIT, parts)
    assert count_pdu(submit(b"e" * size, data_coding)) == Parts(EIGHT_BIT, parts)


def test_http_chain_follows_jasmins_part_limit():
    """count_http_chain counts what Jasmin sends, already cut to long_content_max_parts."""
    factory = SMPPOperationFactory(long_content_max_parts=5)
    chain = factory.SubmitSM(short_message=b"a" * 1000, data_coding=0)
    assert count_http_chain(chain) == Parts(GSM7, 5)
    assert count_pdu(submit(b"a" * 1000, 0)) == Parts(GSM7, 7)


def test_http_chain_of_one_pdu():
    """A short HTTP message is a chain of one PDU: one part."""
    chain = SMPPOperationFactory().SubmitSM(short_message=b"hello", data_coding=0)
    assert count_http_chain(chain) == Parts(GSM7, 1)
