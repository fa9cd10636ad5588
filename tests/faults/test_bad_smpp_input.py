"""Malformed destinations and texts from a real SMPP client against a running gateway."""

from __future__ import annotations

import smpplib.consts
import smpplib.smpp

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books
from tests.faults.support import ESME_ROK, credits_gateway, key, ledger, price, wait_settled
from tests.smpp_client import SmppTestClient

UDHI = 0x40
ESME_RSYSERR = 0x08
# name -> submit_sm parameters (destination_addr always given)
CASES: dict[str, dict] = {
    "empty destination": {"destination_addr": "", "short_message": b"hi"},
    "letters": {"destination_addr": "hello", "short_message": b"hi"},
    "letters after digits": {"destination_addr": "33612abc", "short_message": b"hi"},
    "30 digits": {"destination_addr": "33" + "6" * 28, "short_message": b"hi"},
    "plus sign": {"destination_addr": "+33612000077", "short_message": b"hi"},
    "UDHI, header longer than message": {"destination_addr": "33612000078",
                                         "esm_class": UDHI, "short_message": b"\xff\x00\x03"},
    "UDHI, empty message": {"destination_addr": "33612000079", "esm_class": UDHI,
                            "short_message": b""},
    "UDHI, concat IE with 0 parts": {"destination_addr": "33612000080", "esm_class": UDHI,
                                     "short_message": b"\x05\x00\x03\x01\x00\x01hello"},
    "UDHI, part 3 of 2": {"destination_addr": "33612000081", "esm_class": UDHI,
                          "short_message": b"\x05\x00\x03\x02\x02\x03hello"},
    "data_coding 0xF7": {"destination_addr": "33612000082", "data_coding": 0xF7,
                         "short_message": b"\x01\x02\x03"},
    "data_coding 0x08 odd bytes": {"destination_addr": "33612000083", "data_coding": 0x08,
                                   "short_message": b"\x00a\x00"},
    "data_coding 0x33 reserved": {"destination_addr": "33612000084", "data_coding": 0x33,
                                  "short_message": b"hi"},
    "message_payload 400 bytes": {"destination_addr": "33612000085", "message_payload": b"p" * 400},
    "message_payload 30 bytes": {"destination_addr": "33612000086",
                                 "message_payload": b"q" * 30},
    "160 characters of 0xFF": {"destination_addr": "33612000087",
                               "short_message": b"\xff" * 160},
}


def _submit(client: SmppTestClient, params: dict) -> int:
    pdu = smpplib.smpp.make_pdu(
        "submit_sm", client=client.client, source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
        source_addr="123", dest_addr_ton=smpplib.consts.SMPP_TON_INTL, **params)
    client.client.send_pdu(pdu)
    return pdu.sequence


def test_bad_destinations_and_texts_refused_or_priced():
    """Each odd submit_sm is refused with a clear status or charged its price; the gateway
    keeps answering."""
    with credits_gateway("input") as gateway:
        books = Books(gateway)
        start = books.wallet("alice").balance
        client = SmppTestClient(gateway.smpp_port, "alice", "alicepwd")
        statuses: dict[str, int] = {}
        try:
            for name, params in CASES.items():
                seq = _submit(client, params)
                client.pump(lambda seq=seq: client.response_for(seq) is not None, timeout=30)
                statuses[name] = int(client.response_for(seq).status)
            # Still answering, and still charging.
            ok = client.submit("33612000099", b"after")
            client.pump(lambda: client.response_for(ok) is not None, timeout=30)
            assert client.response_for(ok).status == ESME_ROK
        finally:
            client.close()
        wait_until(lambda: "33612000099" in {r["destination_addr"]
                                             for r in gateway.smsc_received()}, 60,
                   message="the last message delivered")
        wait_settled(books, gateway)
        books_now = ledger(gateway, books)
        outcome = {}
        for name, params in CASES.items():
            dest, status = key(params["destination_addr"]), statuses[name]
            assert status != ESME_RSYSERR, name  # clients retry ESME_RSYSERR forever
            charged = books_now.charged.get(dest, 0)
            if status == ESME_ROK and dest in books_now.smsc_ok:
                assert charged > 0 and charged % price(dest) == 0, (name, charged)
                assert books_now.charge_entries[dest] == 1, name
                outcome[name] = f"accepted, charged {charged // price(dest)} part(s)"
            else:
                assert charged == 0, (name, charged)
                outcome[name] = f"status {status:#04x}, not charged"
        print("bad input:", outcome)
        wallet = books.wallet("alice")
        assert wallet.reserved == 0
        assert wallet.balance == start - sum(books_now.charged.values())
        books.assert_log_sums("alice")
