"""settlement.process: child: the launcher runs jasmin-credits-settled itself."""

from __future__ import annotations

import pytest

from tests.e2e.credits_support import (
    PRICE,
    http,
    provision_with_routes,
    running_gateway,
    send,
)

OVERRIDES = {
    "settlement": {"process": "child", "unqueued_timeout": 2, "unanswered_timeout": 60,
                   "sweep_interval": 0.5},
}


@pytest.fixture(scope="module")
def gateway():
    with running_gateway(OVERRIDES, provision_with_routes) as gw:
        gw.wait_for_consumers({"jasmin_credits.submit_sm", "jasmin_credits.submit_sm_resp"})
        yield gw


def test_one_consumer_per_queue_the_child(gateway):
    """jasmind's reactor does no settlement; its child process does, once."""
    consumers = gateway.rabbitmq.queue_consumers()
    assert consumers["jasmin_credits.submit_sm"] == 1
    assert "settled" not in gateway.children  # started by the launcher, not the test


def test_charged_and_released_through_the_child(gateway, smpp_client, books):
    """Messages are charged, and holds never queued are released, by the child."""
    start = books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "447911000301").status == 0
    assert send(client, "442071000301").status == 0x0B  # no route: released
    status, _ = http(gateway, "send", to="33612000301", content="e" * 400)
    assert status == 200
    books.wait_settled("alice", start - PRICE["447"] - 3 * PRICE["33"])
