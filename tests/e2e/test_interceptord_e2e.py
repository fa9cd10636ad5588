"""Credits through the drop-in interceptord (charging.mode: interceptor-pb).

jasmind (our launcher, not charging itself) calls jasmin-credits-interceptord over PB, as a
stock jasmind would. No MT interceptor is provisioned: the launcher's fallback
(``charging.ensure_interceptor``) still sends every message through it. Credit leases are
on, as by default (short-lived here, so that the books settle within the tests).
"""

from __future__ import annotations

import pytest

from jasmin_credits.localgateway import wait_until
from jasmin_credits.runtime import DROP_IN_END_DELAY
from tests.e2e.credits_support import PRICE, http, message_id, running_gateway, send

LEASE_MESSAGES = 20
OVERRIDES = {
    "charging": {"mode": "interceptor-pb",
                 "lease": {"messages": LEASE_MESSAGES, "seconds": 30, "idle_seconds": 1}},
    "settlement": {"unqueued_timeout": 2, "unanswered_timeout": 60, "sweep_interval": 0.5},
}
ESME_RX_P_APPN = 0x65


def interceptord_log(gateway) -> str:
    """The interceptord's log file (Jasmin's, where ours writes too)."""
    path = gateway.rundir / "log" / "interceptor.log"
    return path.read_text(errors="replace") if path.exists() else ""


def provision_without_interceptor(gw):
    with gw.jcli() as jcli:
        gw.add_group(jcli)
        gw.add_user(jcli)
        gw.add_smsc_connector(jcli)
        gw.add_default_route(jcli)
        assert "Total MT Interceptors: 0" in jcli.run("mtinterceptor -l", check=False)
    gw.wait_connector_bound("smsc")


@pytest.fixture(scope="module")
def gateway():
    with running_gateway(OVERRIDES, provision_without_interceptor, interceptord=True) as gw:
        yield gw


def test_interceptord_holds_single_messages_against_a_credit_lease(gateway, smpp_client,
                                                                    books):
    """After a first message held in Redis, the interceptord takes a credit lease and holds
    the next ones from memory; settlement writes each of them from its submit.sm event, and
    the lease ends with the marker the interceptord publishes, giving back the rest."""
    start = books.top_up("alice", 100_000)
    client = smpp_client()
    first = send(client, "447911000111")
    assert first.status == 0
    wait_until(lambda: books.wallet("alice").leased > 0, 10, interval=0.05,
               message="a credit lease taken by the interceptord")
    granted = books.wallet("alice").leased
    assert granted == LEASE_MESSAGES * PRICE["447"]
    responses = [send(client, f"44791100012{i}") for i in range(5)]
    assert {r.status for r in responses} == {0}
    # each written from the lease: its unused credit shrinks by each message's price (long
    # before the lease's end: idle 1 s, then DROP_IN_END_DELAY before the marker)
    wait_until(lambda: books.wallet("alice").leased == granted - 5 * PRICE["447"], 10,
               interval=0.05, message="the leased messages written by settlement")
    msgids = {message_id(r) for r in [first, *responses]}
    wait_until(lambda: msgids <= {e.fields["msgid"] for e in books.log("alice")
                                  if e.type == "charge"}, 10, interval=0.05,
               message="each message charged under the id its client was told")
    log = interceptord_log(gateway)
    assert f"Credit leases: {LEASE_MESSAGES} messages" in log
    assert "interceptord" in log.split("gateway name", 1)[1].splitlines()[0]  # its lock file
    # (it cannot tell our launcher's jasmind from a stock one: it says what stock 0.11.1 lacks)
    assert "has the submit_sm_resp bug" in log
    # the marker gives the rest back: nothing reserved, six messages charged
    books.wait_settled("alice", start - 6 * PRICE["447"], timeout=DROP_IN_END_DELAY + 15)
    books.assert_log_sums("alice")


def test_debit_ends_the_interceptords_lease_at_its_next_check(gateway, smpp_client, books):
    """A debit made elsewhere (here straight in Redis) raises the wallet's lease epoch: the
    interceptord ends its lease at its next check (every second), then refuses."""
    books.top_up("alice", 100_000)
    client = smpp_client()

    def leased() -> bool:
        assert send(client, "447911000131").status == 0
        return books.wallet("alice").leased > 0

    wait_until(leased, 10, interval=0.05, message="a credit lease")
    books.top_up("alice", -books.wallet("alice").balance)
    wait_until(lambda: "its wallet changed" in interceptord_log(gateway), 3, interval=0.05,
               message="the interceptord ending the lease of the debited wallet")
    assert send(client, "447911000132").status == ESME_RX_P_APPN
    wait_until(lambda: books.wallet("alice").reserved == 0, DROP_IN_END_DELAY + 15,
               interval=0.1, message="the lease's unused credit given back")
    books.assert_log_sums("alice")


def test_smpp_message_charged_through_the_interceptord(gateway, smpp_client, books):
    """An SMPP message is held by the interceptord and charged from Jasmin's events."""
    start = books.top_up("alice", 10_000)
    response = send(smpp_client(), "447911000101")
    assert response.status == 0
    books.wait_settled("alice", start - PRICE["447"])


def test_http_long_message_charged_three_parts(gateway, books):
    """A 400-character HTTP message is charged 3 parts through the interceptord."""
    start = books.top_up("alice", 0)
    status, body = http(gateway, "send", to="33612000101", content="b" * 400)
    assert status == 200, body
    books.wait_settled("alice", start - 3 * PRICE["33"])


def test_no_credit_refused_with_configured_status(gateway, smpp_client, books):
    """At zero credit the interceptord answers ESME_RX_P_APPN; nothing reaches the SMSC."""
    books.top_up("alice", -books.wallet("alice").balance)
    wait_until(lambda: books.wallet("alice").leased == 0, DROP_IN_END_DELAY + 15,
               interval=0.1, message="no credit lease left from earlier tests")
    assert send(smpp_client(), "447911000102").status == 0x65
    assert not [r for r in gateway.smsc_received() if r["destination_addr"] == "447911000102"]
