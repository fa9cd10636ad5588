"""Settlement out of jasmind: jasmin-credits-settled run by the operator
(``settlement.process: separate``) or by the launcher itself (``child``)."""

from __future__ import annotations

import pytest

from tests.e2e.credits_support import (
    PRICE,
    http,
    provision_with_routes,
    running_gateway,
    send,
)


@pytest.fixture(scope="module", params=["separate", "child"])
def gateway(request):
    overrides = {"settlement": {"process": request.param, "unqueued_timeout": 2,
                                "unanswered_timeout": 60, "sweep_interval": 0.5}}
    with running_gateway(overrides, provision_with_routes,
                         smsc_args=["--fail", "3398=ESME_RINVDSTADR"]) as gw:
        # LocalGateway runs the daemon for "separate"; the launcher runs it for "child".
        assert ("settled" in gw.children) == (request.param == "separate")
        gw.wait_for_consumers({"jasmin_credits.submit_sm_resp", "jasmin_credits.deliver_sm"})
        yield gw


def test_only_the_daemon_consumes_jasmins_events(gateway):
    """jasmind's reactor does no settlement: one consumer per queue, the daemon's; and with
    the launcher linking at queueing (the default) nobody needs the submit.sm.* events."""
    consumers = gateway.rabbitmq.queue_consumers()
    assert consumers["jasmin_credits.submit_sm_resp"] == 1
    assert consumers["jasmin_credits.deliver_sm"] == 1
    assert "jasmin_credits.submit_sm" not in consumers


def test_charged_by_the_daemon(gateway, smpp_client, books):
    """jasmind only holds; jasmin-credits-settled charges from Jasmin's events."""
    start = books.top_up("alice", 10_000)
    assert send(smpp_client(), "447911000201").status == 0
    status, _ = http(gateway, "send", to="33612000201", content="d" * 400)
    assert status == 200
    books.wait_settled("alice", start - PRICE["447"] - 3 * PRICE["33"])


def test_errors_and_unqueued_holds_released_by_the_daemon(gateway, smpp_client, books):
    """An SMSC error and a message with no route are released by the daemon."""
    start = books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "3398000201").status == 0
    assert send(client, "442071000201").status == 0x0B  # no route
    books.wait_settled("alice", start)
