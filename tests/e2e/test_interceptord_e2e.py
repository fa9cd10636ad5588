"""Credits through the drop-in interceptord (charging.mode: interceptor-pb).

jasmind (our launcher, not charging itself) calls jasmin-credits-interceptord over PB, as a
stock jasmind would. No MT interceptor is provisioned: the launcher's fallback
(``charging.ensure_interceptor``) still sends every message through it.
"""

from __future__ import annotations

import pytest

from tests.e2e.credits_support import PRICE, http, running_gateway, send

OVERRIDES = {
    "charging": {"mode": "interceptor-pb"},
    "settlement": {"unqueued_timeout": 2, "unanswered_timeout": 60, "sweep_interval": 0.5},
}


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
    assert send(smpp_client(), "447911000102").status == 0x65
    assert not [r for r in gateway.smsc_received() if r["destination_addr"] == "447911000102"]
