"""An operator's debit ends the credit leases a running gateway holds on the wallet.

Credit leases are on by default: jasmind holds single messages against credit it carved out
of the wallet, answering without Redis. An operator who debits a customer to nothing (from
jCli, as here) expects the next message refused, not accepted for as long as the lease
lasts. A debit through this gateway's jCli ends its leases on the wallet before the answer
(``runtime.wallet_cut``); the debit also raises the wallet's lease epoch (``lua/topup.lua``),
which other gateways check every second (``LeaseBook.check_epochs``).

The lease here would not end on its own during the test (``idle_seconds`` 60, ``seconds``
120), so only the debit can end it. Real redis-server, RabbitMQ, jasmind through our
launcher, the SMSC simulator, smpplib, jCli over telnet.
"""

from __future__ import annotations

import pytest

from jasmin_credits.localgateway import wait_until
from jasmin_credits.money import format_amount
from tests.e2e.credits_support import (
    jasmind_log,
    message_id,
    provision_with_routes,
    running_gateway,
    send,
)

LEASE = {"messages": 50, "seconds": 120, "idle_seconds": 60}
OVERRIDES = {
    "settlement": {"unqueued_timeout": 2, "unanswered_timeout": 60, "sweep_interval": 0.5},
    "charging": {"lease": LEASE},
}
ESME_RX_P_APPN = 0x65


@pytest.fixture(scope="module")
def gateway():
    with running_gateway(OVERRIDES, provision_with_routes) as gw:
        yield gw


def test_debit_from_jcli_ends_the_open_lease_at_once(gateway, smpp_client, books):
    books.top_up("alice", 100_000)
    client = smpp_client()
    sent = []

    def leased() -> bool:
        sent.append(send(client, "447911000301"))
        return books.wallet("alice").leased > 0

    wait_until(leased, 20, interval=0.3, message="a credit lease")
    assert {r.status for r in sent} == {0}
    msgids = {message_id(r) for r in sent}
    wait_until(lambda: msgids <= {e.fields["msgid"] for e in books.log("alice")[:50]
                                  if e.type == "charge"}, 20, interval=0.1,
               message="the messages sent so far charged")
    assert "Credit leases: 50 messages" in jasmind_log(gateway)  # our log reaches jasmind's

    balance = books.wallet("alice").balance
    with gateway.jcli() as jcli:
        # (the example config keeps amounts with 4 decimals)
        out = jcli.run(f"credit -t alice -{format_amount(balance, 4)} customer blocked")
    assert out.startswith("Successfully subtracted"), out
    # the very next message: no tick of the lease book in between to count on
    assert send(client, "447911000302").status == ESME_RX_P_APPN

    wait_until(lambda: "its wallet changed" in jasmind_log(gateway), 20,
               message="jasmind logging the end of the debited wallet's lease")
    wait_until(lambda: books.wallet("alice").leased == 0, 20, interval=0.1,
               message="the lease's unused credit given back")
    assert send(client, "447911000303").status == ESME_RX_P_APPN
    books.wait_settled("alice", 0)
