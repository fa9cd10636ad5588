"""Credits on a real gateway: our launcher charging in process, settled from Jasmin's events.

Every test runs three times: with ``charging.mode: pre-routing`` (the default: charged right
after Jasmin's interception step), ``in-process`` (charged inside it), both with credit
leases (``charging.lease``, on by default: single messages held from jasmind's memory, their
reservations written by settlement), and pre-routing with leases off (every hold in Redis
before the answer). Real redis-server,
RabbitMQ, jasmind (through jasmin-credits-jasmind), the SMSC simulator, smpplib as the SMPP
client and Jasmin's HTTP API.
"""

from __future__ import annotations

import json

import pytest

from jasmin_credits.localgateway import wait_until
from jasmin_credits.settlement import parse_lease
from tests.e2e.conftest import wait_received
from tests.e2e.credits_support import (
    PRICE,
    http,
    message_id,
    provision_with_routes,
    running_gateway,
    send,
)

UDHI = 0x40
OPERATOR_SCRIPT = (
    "if routable.pdu.params['destination_addr'].startswith(b'3366'):\n"
    "    smpp_status = 0x0B\n"
    "    http_status = 403\n"
)
OVERRIDES = {
    "settlement": {"unqueued_timeout": 2, "unanswered_timeout": 60, "sweep_interval": 0.5},
}


LEASE = {"messages": 20, "seconds": 5, "idle_seconds": 3}


@pytest.fixture(scope="module", params=["pre-routing", "in-process", "no-leases"])
def gateway(request):
    leases = request.param != "no-leases"
    mode = "in-process" if request.param == "in-process" else "pre-routing"
    charging = {"mode": mode, "lease": LEASE if leases else {"messages": 0}}
    overrides = {**OVERRIDES, "charging": charging}
    with running_gateway(overrides, lambda gw: provision_with_routes(gw, OPERATOR_SCRIPT),
                         smsc_args=["--fail", "3398=ESME_RINVDSTADR"]) as gw:
        gw.charging_mode = mode
        gw.leases = leases
        yield gw


def held(wallet) -> int:
    """What is held for messages: reserved, less what credit leases hold unused."""
    return wallet.reserved - wallet.leased


def test_uk_fr_us_are_charged_their_own_prices(gateway, smpp_client, books):
    """Three SMPP messages: the balance falls by exactly the three card prices."""
    start = books.top_up("alice", 100_000)
    client = smpp_client()
    responses = [send(client, d) for d in ("447911000001", "33612000001", "12025550001")]
    assert [r.status for r in responses] == [0, 0, 0]
    books.wait_settled("alice", start - PRICE["447"] - PRICE["33"] - PRICE["1"])
    charges = [e for e in books.log("alice")[:3] if e.type == "charge"]
    assert {e.fields["msgid"] for e in charges} == {message_id(r) for r in responses}
    assert {e.fields["country"] for e in charges} == {"GB", "FR", "US"}


def test_three_part_udh_message_charges_three_parts(gateway, smpp_client, books):
    """A 3-part UDH message over SMPP is charged 3 parts, each part with its message id."""
    start = books.top_up("alice", 0)
    client = smpp_client()
    parts = [bytes([5, 0, 3, 0x33, 3, n]) + b"x" * 100 for n in (1, 2, 3)]
    statuses = [send(client, "447911000002", p, esm_class=UDHI).status for p in parts]
    assert statuses == [0, 0, 0]
    books.wait_settled("alice", start - 3 * PRICE["447"])
    charges = [e for e in books.log("alice")[:3] if e.type == "charge"]
    assert len({e.fields["msgid"] for e in charges}) == 3


def test_400_character_http_message_charges_three_parts(gateway, books):
    """A 400-character message over HTTP /send is charged 3 parts."""
    start = books.top_up("alice", 0)
    status, body = http(gateway, "send", to="33612000003", content="a" * 400)
    assert status == 200, body
    books.wait_settled("alice", start - 3 * PRICE["33"])
    [charge] = [e for e in books.log("alice")[:1]]
    assert (charge.type, charge.fields["parts"]) == ("charge", "3")
    assert charge.fields["msgid"] in body


def test_no_credit_refused_and_nothing_reaches_smsc(gateway, smpp_client, books):
    """At zero available credit the client gets ESME_RX_P_APPN and the SMSC sees nothing.
    (A credit lease still open from an earlier test ends with the debit:
    tests/e2e/test_lease_cut_e2e.py.)"""
    balance = books.wallet("alice").balance
    books.top_up("alice", -balance)
    wait_until(lambda: books.wallet("alice").leased == 0, 20, interval=0.1,
               message="no credit lease left open")
    client = smpp_client()
    assert send(client, "447911000004").status == 0x65
    status, body = http(gateway, "send", to="447911000005", content="hi")
    assert (status, body) == (402, 'Error "Insufficient credit (jasmin-credits: '
                                   'insufficient_credit)"')
    rows = [r for r in gateway.smsc_received()
            if r["destination_addr"] in ("447911000004", "447911000005")]
    assert rows == []
    books.wait_settled("alice", 0)


def test_daily_limit_refused_with_its_status(gateway, smpp_client, books):
    """A reached daily credit limit answers ESME_RX_T_APPN over SMPP and 429 over HTTP."""
    books.top_up("alice", 100_000)
    used = books.wallet("alice").usage[0].credits
    books.configure("alice", lim__credits__day=used + PRICE["447"])
    try:
        client = smpp_client()
        assert send(client, "447911000006").status == 0
        assert send(client, "447911000007").status == 0x64
        status, body = http(gateway, "send", to="447911000008", content="hi")
        assert (status, body) == (429, 'Error "Daily credit limit reached (jasmin-credits: '
                                       'daily_credit_limit)"')
    finally:
        books.configure("alice", lim__credits__day=None)


def test_smsc_error_gives_the_credits_back(gateway, smpp_client, books):
    """The SMSC refuses (ESME_RINVDSTADR): the hold is released, nothing charged."""
    start = books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "3398000001").status == 0  # Jasmin accepted and queued it
    wait_received(gateway, "3398000001")
    books.wait_settled("alice", start)
    events = books.run(books.store.events("alice"))[0]
    assert any(e.type == "released" and e.fields.get("reason") == "ESME_RINVDSTADR"
               for e in events)


def test_no_route_gives_the_credits_back(gateway, smpp_client, books):
    """No route: the hold is never queued. Pre-routing gives it back before answering the
    client; in-process charging leaves it to the sweeper's unqueued timeout."""
    start = books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "442071000001").status == 0x0B  # ESME_RINVDSTADR: no route
    if gateway.charging_mode == "pre-routing":
        wallet = books.wallet("alice")
        assert (wallet.balance, held(wallet)) == (start, 0)
        if not gateway.leases:  # (a leased hold goes back to jasmind's lease, not Redis)
            events = books.run(books.store.events("alice"))[0]
            assert any(e.type == "released" and e.fields.get("reason") == "never queued"
                       for e in events)
    elif not gateway.leases:
        assert held(books.wallet("alice")) > 0  # held until the unqueued timeout
        books.wait_settled("alice", start, timeout=15)
    else:  # held against the lease, never written: the lease's end gives it back
        books.wait_settled("alice", start, timeout=15)


def test_rate_quotes_our_price_and_charges_nothing(gateway, books):
    """HTTP /rate answers our card's price for every part, and holds or charges nothing."""
    start = books.top_up("alice", 10_000)
    status, body = http(gateway, "rate", to="447911000009", content="c" * 200)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["submit_sm_count"] == 2
    assert answer["unit_rate"] == 0.05
    assert answer["credits"] == {"card": "world", "country": "GB", "prefix": "447", "parts": 2,
                                 "encoding": "gsm7", "unit_price": "0.0500", "total": "0.1000"}
    wallet = books.wallet("alice")
    assert (wallet.balance, held(wallet)) == (start, 0)


def test_rate_quotes_the_parts_send_charges(gateway, books):
    """GSM text with extension or non-ASCII characters: /rate quotes what /send charges."""
    for content, parts in (("[" * 80 + "a", 2), ("€" * 80, 1)):
        status, body = http(gateway, "rate", to="33612345678", content=content, coding="0")
        assert status == 200, body
        answer = json.loads(body)
        assert (answer["submit_sm_count"], answer["credits"]["parts"]) == (parts, parts)
        start = books.top_up("alice", 100_000)
        status, body = http(gateway, "send", to="33612345678", content=content, coding="0")
        assert status == 200, body
        books.wait_settled("alice", start - parts * PRICE["33"])
        [charge] = books.log("alice")[:1]
        assert (charge.type, charge.fields["parts"]) == ("charge", str(parts))


def test_operator_script_runs_first_and_can_refuse(gateway, smpp_client, books):
    """The operator's interceptor script still refuses; a refused message holds nothing."""
    start = books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "33660000001").status == 0x0B
    wallet = books.wallet("alice")
    assert (wallet.balance, held(wallet)) == (start, 0)


def test_invalid_and_unpriced_destinations_refused(gateway, smpp_client, books):
    """Letters in the destination and an unpriced number are refused, never crash."""
    books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "hello").status == 0x0B
    assert send(client, "0999").status == 0x0B  # national format: no country code matches
    assert held(books.wallet("alice")) == 0


def test_queued_messages_carry_their_tag_in_a_header(gateway, smpp_client, books):
    """Our jasmind repeats the tag in the submit.sm.* message's headers (tagheaders.py), so
    settlement reads it there (a copy of the message read from the real RabbitMQ)."""
    import subprocess
    import sys

    books.top_up("alice", 10_000)
    if gateway.leases:  # a message held in Redis asks for the lease the next one uses
        client = smpp_client()
        wait_until(lambda: send(client, "447911000122").status == 0
                   and books.wallet("alice").leased > 0, 20, interval=0.3,
                   message="a credit lease")
    peek = subprocess.Popen([sys.executable, "-m", "tests.e2e.amqp_peek",
                             str(gateway.amqp_port), "submit.sm.*"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert peek.stdout.readline().strip() == "ready", peek.stderr.read()
        assert send(smpp_client(), "447911000123").status == 0
        out, err = peek.communicate(timeout=60)
    finally:
        peek.kill()
    properties = json.loads(out.splitlines()[-1])
    uid, ref, parts, *lease = properties["headers"]["jasmin_credits"].split(" ", 3)
    assert (uid, parts) == ("alice", "1")
    if gateway.leases:  # the whole hold travels in the tag; settlement writes it
        assert parse_lease(lease[0]).unit_price == PRICE["447"]
        wait_until(lambda: books.run(books.store.reservation("alice", ref)), 20,
                   interval=0.05, message=f"reservation {ref} written by settlement")
    else:
        assert lease == []
    reservation = books.run(books.store.reservation("alice", ref))
    assert reservation, f"no reservation {ref}: {err}"
