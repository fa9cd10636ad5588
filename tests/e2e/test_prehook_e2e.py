"""Credits in ``charging.mode: pre-routing``: our launcher charges between Jasmin's
interception and routing steps, with no MT interceptor needed.

Real redis-server, RabbitMQ, jasmind (through jasmin-credits-jasmind), the SMSC simulator,
smpplib as the SMPP client and Jasmin's HTTP API. The operator has one interceptor of their
own, matching only destinations ``3366...``; every other message meets no interceptor.
Credit leases are off here (``charging.lease.messages: 0``): these tests follow single holds
through Redis; tests/e2e/test_credits_e2e.py runs pre-routing with and without leases.
"""

from __future__ import annotations

import pytest

from tests.e2e.credits_support import (
    PRICE,
    http,
    provision_with_routes,
    running_gateway,
    send,
)

UDHI = 0x40
OPERATOR_SCRIPT = "smpp_status = 0x0B\nhttp_status = 403\n"
OVERRIDES = {
    "charging": {"mode": "pre-routing", "lease": {"messages": 0}},
    "settlement": {"unqueued_timeout": 2, "unanswered_timeout": 60, "sweep_interval": 0.5},
}


@pytest.fixture(scope="module")
def gateway():
    with running_gateway(OVERRIDES, lambda gw: provision_with_routes(
            gw, OPERATOR_SCRIPT, default_interceptor=False)) as gw:
        yield gw


def test_smpp_and_http_charged_without_any_interceptor(gateway, smpp_client, books):
    """No interceptor matches: SMPP and HTTP /send messages are charged their card price."""
    start = books.top_up("alice", 100_000)
    client = smpp_client()
    assert [send(client, d).status for d in ("447911100001", "33612100001")] == [0, 0]
    status, body = http(gateway, "send", to="12025510001", content="hi")
    assert status == 200, body
    books.wait_settled("alice", start - PRICE["447"] - PRICE["33"] - PRICE["1"])
    charges = [e for e in books.log("alice")[:3] if e.type == "charge"]
    assert {e.fields["country"] for e in charges} == {"GB", "FR", "US"}


def test_three_part_udh_message_charges_three_parts(gateway, smpp_client, books):
    """A 3-part UDH message over SMPP is charged 3 parts."""
    start = books.top_up("alice", 0)
    client = smpp_client()
    parts = [bytes([5, 0, 3, 0x44, 3, n]) + b"x" * 100 for n in (1, 2, 3)]
    assert [send(client, "447911100002", p, esm_class=UDHI).status for p in parts] == [0] * 3
    books.wait_settled("alice", start - 3 * PRICE["447"])


def test_no_credit_refused_with_configured_statuses(gateway, smpp_client, books):
    """At zero credit: ESME_RX_P_APPN over SMPP, 402 over HTTP, nothing reaches the SMSC."""
    books.top_up("alice", -books.wallet("alice").balance)
    client = smpp_client()
    assert send(client, "447911100004").status == 0x65
    status, body = http(gateway, "send", to="447911100005", content="hi")
    assert status == 402, body
    assert [r for r in gateway.smsc_received()
            if r["destination_addr"] in ("447911100004", "447911100005")] == []
    books.wait_settled("alice", 0)


def test_invalid_destination_refused(gateway, smpp_client, books):
    """Letters in the destination are refused (ESME_RINVDSTADR), nothing held."""
    books.top_up("alice", 10_000)
    assert send(smpp_client(), "hello").status == 0x0B
    assert books.wallet("alice").reserved == 0


def test_no_route_releases_the_hold_at_once(gateway, smpp_client, books):
    """Jasmin finds no route after our hold: the hold is released before the answer."""
    start = books.top_up("alice", 10_000)
    assert send(smpp_client(), "442071100001").status == 0x0B
    wallet = books.wallet("alice")
    assert (wallet.balance, wallet.reserved) == (start, 0)


def test_operator_interceptor_runs_first_and_can_refuse(gateway, smpp_client, books):
    """The operator's interceptor still refuses its messages; a refused one holds nothing."""
    start = books.top_up("alice", 10_000)
    assert send(smpp_client(), "33660100001").status == 0x0B
    status, _ = http(gateway, "send", to="33660100002", content="hi")
    assert status == 403
    wallet = books.wallet("alice")
    assert (wallet.balance, wallet.reserved) == (start, 0)


def test_rate_charges_nothing(gateway, books):
    """HTTP /rate holds and charges nothing."""
    start = books.top_up("alice", 10_000)
    status, body = http(gateway, "rate", to="447911100009", content="hello")
    assert status == 200, body
    wallet = books.wallet("alice")
    assert (wallet.balance, wallet.reserved) == (start, 0)
