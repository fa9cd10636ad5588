"""Real Jasmin objects (users, groups, PDUs, routables) for unit tests."""

from __future__ import annotations

import messaging.sms  # noqa: F401 - registers the 'gsm0338' codec Jasmin's HTTP API uses
from jasmin.protocols.smpp.operations import SMPPOperationFactory
from jasmin.routing.jasminApi import Group, User
from jasmin.routing.Routables import RoutableSubmitSm
from smpp.pdu.operations import SubmitSM
from smpp.pdu.pdu_types import EsmClass, EsmClassGsmFeatures, EsmClassMode, EsmClassType

from jasmin_credits.pricing import Pricer
from jasmin_credits.ratecard import RateCard

UDHI = EsmClass(EsmClassMode.DEFAULT, EsmClassType.DEFAULT,
                [EsmClassGsmFeatures.UDHI_INDICATOR_SET])


def user(uid: str = "alice", gid: str = "customers") -> User:
    return User(uid, Group(gid), uid, "pwd")


def http_message(text: str, destination: str = "447911123456") -> SubmitSM:
    """A SubmitSM chain as Jasmin's HTTP /send builds it (one PDU per part)."""
    factory = SMPPOperationFactory(long_content_max_parts=10, long_content_split="udh")
    return factory.SubmitSM(source_addr=b"sender", destination_addr=destination.encode(),
                            short_message=text.encode("gsm0338"))


def smpp_part(seq: int, total: int, ref: int = 7, destination: str = "447911123456",
              text: bytes = b"part") -> SubmitSM:
    """One submit_sm of a concatenated message, with an 8-bit-reference UDH."""
    udh = bytes([0x05, 0x00, 0x03, ref, total, seq])
    return SubmitSM(source_addr=b"sender", destination_addr=destination.encode(),
                    short_message=udh + text, esm_class=UDHI, data_coding=0)


def smpp_message(text: bytes = b"hello", destination: str = "447911123456") -> SubmitSM:
    return SubmitSM(source_addr=b"sender", destination_addr=destination.encode(),
                    short_message=text, data_coding=0)


def routable(pdu: SubmitSM, uid: str = "alice", gid: str = "customers") -> RoutableSubmitSm:
    return RoutableSubmitSm(pdu, user(uid, gid))


def test_pricer(default: str | None = None) -> Pricer:
    """UK 0.0800 / UK mobile 0.1200 / France 0.0700 / US 0.0100, in units of 1/10000."""
    card = RateCard.from_mapping(
        {"name": "test", "default": default, "entries": [
            {"prefix": "44", "country": "GB", "price": "0.0800"},
            {"prefix": "447", "country": "GB", "price": "0.1200"},
            {"prefix": "33", "country": "FR", "price": "0.0700"},
            {"prefix": "1", "country": "US", "price": "0.0100"},
        ]},
        "test.yaml",
    )
    return Pricer({"test": card}, "test")


test_pricer.__test__ = False  # not a pytest test
