"""DeliveryDecoder against txAMQP's own decoding of the same frames: every frame is built by
txAMQP's encoder, decoded both ways, and the results compared (Hypothesis drives the
properties and header tables); what this decoder does not read goes to txAMQP's decoder."""

from __future__ import annotations

from io import BytesIO

from hypothesis import given, settings
from hypothesis import strategies as st
from txamqp.codec import Codec
from txamqp.connection import Frame, Header, Method
from txamqp.protocol import FrameReceiver
from txamqp.spec import load

from jasmin_credits.amqp import default_spec_path
from jasmin_credits.amqp_frames import FRAME_END, FRAME_HEAD, DeliveryDecoder

SPEC = load(default_spec_path())
BASIC = SPEC.classes.byname["basic"]
DECODER = DeliveryDecoder(SPEC)
RECEIVER = FrameReceiver(SPEC)


def wire(payload, channel: int = 1) -> bytes:
    """One frame as txAMQP writes it."""
    return RECEIVER._pack_frame(Frame(channel, payload))


def payload_bounds(frame: bytes) -> tuple[int, int]:
    _, _, size = FRAME_HEAD.unpack_from(frame, 0)
    end = FRAME_HEAD.size + size
    assert frame[end] == FRAME_END
    return FRAME_HEAD.size, end


def txamqp_decoded(frame: bytes):
    return RECEIVER._unpack_frame(frame).payload


# txAMQP's encoder writes a str's length in characters: only ASCII text survives it.
ascii_text = st.text(st.characters(max_codepoint=127), max_size=40)
shortstr = st.one_of(ascii_text, st.binary(max_size=255))
leaf = st.one_of(ascii_text, st.binary(max_size=40), st.integers(0, 2**32 - 1), st.booleans())
tables = st.recursive(st.dictionaries(ascii_text.filter(bool), leaf, max_size=5),
                      lambda inner: st.dictionaries(ascii_text.filter(bool), inner, max_size=3),
                      max_leaves=12)
properties = st.fixed_dictionaries({}, optional={
    "content-type": shortstr, "content-encoding": shortstr, "headers": tables,
    "delivery-mode": st.integers(0, 255), "priority": st.integers(0, 255),
    "correlation-id": shortstr, "reply-to": shortstr, "expiration": shortstr,
    "message-id": shortstr, "timestamp": st.integers(0, 2**64 - 1), "type": shortstr,
    "user-id": shortstr, "app-id": shortstr, "reserved": shortstr})


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def encode_table(table: dict) -> bytes:
    """A field table with txAMQP's decodable types: S, I, F (nested) and t (booleans); its
    encoder writes neither F nor t, RabbitMQ and other clients do."""
    out = b""
    for key, value in table.items():
        out += bytes([len(_bytes(key))]) + _bytes(key)
        if isinstance(value, bool):
            out += b"t" + bytes([value])
        elif isinstance(value, int):
            out += b"I" + value.to_bytes(4, "big")
        elif isinstance(value, dict):
            out += b"F" + encode_table(value)
        else:
            out += b"S" + len(_bytes(value)).to_bytes(4, "big") + _bytes(value)
    return len(out).to_bytes(4, "big") + out


def header_frame(props: dict, weight: int, size: int) -> bytes:
    """A basic content header frame (AMQP 0-9-1, 4.2.6), every property present in ``props``."""
    flags, values = 0, b""
    for index, field in enumerate(BASIC.fields):  # 14 properties: one flag word
        value = props.get(field.name)
        if value is None:
            continue
        flags |= 1 << (15 - index)
        if field.type == "shortstr":
            values += bytes([len(_bytes(value))]) + _bytes(value)
        elif field.type == "octet":
            values += bytes([value])
        elif field.type == "timestamp":
            values += value.to_bytes(8, "big")
        else:
            values += encode_table(value)
    payload = (BASIC.id.to_bytes(2, "big") + weight.to_bytes(2, "big") + size.to_bytes(8, "big")
               + flags.to_bytes(2, "big") + values)
    return FRAME_HEAD.pack(2, 1, len(payload)) + payload + bytes([FRAME_END])


def _strict_equal(ours, theirs) -> None:
    """Equal, and of the same types all the way down (True is not 1, str is not bytes)."""
    assert type(ours) is type(theirs), (ours, theirs)
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys()
        for key in ours:
            _strict_equal(ours[key], theirs[key])
    else:
        assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(properties, st.integers(0, 2**64 - 1), st.integers(0, 65535))
def test_content_headers_decode_as_txamqp_decodes_them(props, size, weight):
    frame = header_frame(props, weight, size)
    start, end = payload_bounds(frame)
    ours, theirs = DECODER.header(frame, start, end), txamqp_decoded(frame)
    assert (ours.klass, ours.weight, ours.size) == (theirs.klass, theirs.weight, theirs.size)
    _strict_equal(ours.properties, theirs.properties)
    assert set(ours.properties) == set(props)


def test_txamqps_own_frames_decode_the_same():
    """A header as txAMQP (and so Jasmin) writes it, with an unsigned and a pickled value."""
    props = {"message-id": "m1", "priority": 1, "reply-to": "submit.sm.resp.smsc",
             "headers": {"source_connector": "smppsapi", "bill": b"\x80\x02pickled",
                         "n": 4294967295}}
    frame = wire(Header(BASIC, 0, 1234, **props))
    ours, theirs = DECODER.header(frame, *payload_bounds(frame)), txamqp_decoded(frame)
    _strict_equal(ours.properties, theirs.properties)
    assert ours.size == theirs.size == 1234


@settings(max_examples=200, deadline=None)
@given(shortstr, st.integers(0, 2**64 - 1), st.booleans(), shortstr, shortstr)
def test_deliver_methods_decode_as_txamqp_decodes_them(tag, delivery_tag, redelivered,
                                                        exchange, key):
    method = Method(DECODER.deliver, tag, delivery_tag, redelivered, exchange, key)
    frame = wire(method)
    ours = DECODER.deliver_method(frame, *payload_bounds(frame))
    theirs = txamqp_decoded(frame)
    assert ours.method is theirs.method
    for mine, txamqps in zip(ours.args, theirs.args, strict=True):
        _strict_equal(mine, txamqps)


def test_other_methods_are_not_taken():
    ack = Method(BASIC.methods.byname["ack"], 7, False)
    frame = wire(ack)
    assert DECODER.deliver_method(frame, *payload_bounds(frame)) is None


def test_a_truncated_deliver_is_left_to_txamqp():
    frame = wire(Method(DECODER.deliver, "tag", 1, False, "messaging", "submit.sm.x"))
    start, end = payload_bounds(frame)
    assert DECODER.deliver_method(frame, start, end - 3) is None


def test_a_field_type_txamqp_refuses_is_refused_as_txamqp_refuses_it():
    """A header table with an 'l' (64-bit) field: txAMQP 0.x raises ValueError; so do we,
    through its own decoder."""
    frame = bytearray(wire(Header(BASIC, 0, 5, headers={"n": 1})))
    at = frame.index(b"nI")  # the field's type octet
    frame[at + 1:at + 2] = b"l"
    frame = bytes(frame)
    start, end = payload_bounds(frame)
    errors = []
    for decode in (lambda: DECODER.header(frame, start, end),
                   lambda: Header.decode(SPEC, Codec(BytesIO(frame[start - 4:end])))):
        try:
            decode()
        except ValueError as error:
            errors.append(str(error))
    assert errors == ["b'l'", "b'l'"]


def test_a_truncated_header_fails_as_txamqp_fails():
    frame = wire(Header(BASIC, 0, 3, **{"message-id": "m" * 30, "headers": {"a": "b"}}))
    start, end = payload_bounds(frame)
    cut = end - 5
    outcomes = []
    for decode in (lambda: DECODER.header(frame, start, cut),
                   lambda: Header.decode(SPEC, Codec(BytesIO(frame[start - 4:cut])))):
        try:
            outcomes.append(decode().properties)
        except Exception as error:  # noqa: BLE001 - whatever txAMQP raises
            outcomes.append(type(error))
    assert outcomes[0] == outcomes[1]
