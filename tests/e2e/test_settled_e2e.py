"""Settlement out of jasmind: jasmin-credits-settled run by the operator
(``settlement.process: separate``) or by the launcher itself (``child``).

With ``settlement.link: queueing`` the launcher links and settles the SMSC's
answers in process and the daemon consumes nothing: it sweeps, runs plans and delivers
events. With ``events`` the daemon consumes all of Jasmin's events."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import (
    PRICE,
    http,
    provision_with_routes,
    running_gateway,
    send,
    settled_processes,
)
from tests.prometheus_support import lint_metrics

OUR_QUEUES = ("jasmin_credits.submit_sm", "jasmin_credits.submit_sm_resp",
              "jasmin_credits.deliver_sm")
RECEIPTS_QUEUE = "jasmin_credits.deliver_sm"
"""Only with settlement.dlr_refund set (not here): receipts refund nothing otherwise."""


@pytest.fixture(scope="module", params=[("separate", "queueing"), ("child", "queueing"),
                                        ("separate", "events"), ("child", "events")],
                ids="-".join)
def gateway(request):
    process, link = request.param
    overrides = {"settlement": {"process": process, "link": link, "unqueued_timeout": 2,
                                "unanswered_timeout": 60, "sweep_interval": 0.5}}
    with running_gateway(overrides, provision_with_routes,
                         smsc_args=["--fail", "3398=ESME_RINVDSTADR"]) as gw:
        # LocalGateway runs the daemon for "separate"; the launcher runs it for "child".
        assert ("settled" in gw.children) == (process == "separate")
        wait_until(lambda: settled_processes(gw.credits_config), 30,
                   message="jasmin-credits-settled running")
        if link == "events":
            gw.wait_for_consumers(set(OUR_QUEUES) - {RECEIPTS_QUEUE})
        gw.link = link
        gw.process = process
        yield gw


def test_who_consumes_jasmins_events(gateway):
    """events: one consumer per queue, the daemon's (jasmind's reactor consumes nothing),
    and no receipts queue without dlr_refund; queueing: no consumer at all (the launcher
    settles in process)."""
    consumers = gateway.rabbitmq.queue_consumers()
    expected = 1 if gateway.link == "events" else 0
    assert {q: consumers.get(q, 0) for q in OUR_QUEUES} == {
        q: 0 if q == RECEIPTS_QUEUE else expected for q in OUR_QUEUES}
    assert RECEIPTS_QUEUE not in {queue for _, queue, _ in gateway.rabbitmq.bindings()}


def test_the_child_runs_below_jasmind(gateway):
    """settlement.nice (10 by default) lowers the child's priority; the daemon an operator
    runs (separate) keeps the priority it was started with."""
    (pid, _), = settled_processes(gateway.credits_config)
    nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    jasmind = gateway.children["jasmind"].process.pid
    base = int(Path(f"/proc/{jasmind}/stat").read_text().rsplit(")", 1)[1].split()[16])
    assert nice - base == (10 if gateway.process == "child" else 0)


def test_charged(gateway, smpp_client, books):
    """SMPP and HTTP messages are charged (by the launcher, or by the daemon from events).
    With events, credit leases are on (the default): the first message asks for one, and
    the gateway's metrics show the next held on it."""
    start = books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "447911000201").status == 0
    sent = 1
    if gateway.link == "events":
        wait_until(lambda: metric_sum(gateway, "jasmin_credits_lease_requests_total",
                                      outcome="granted") >= 1, 20,
                   message="a credit lease granted")
        held = metric_sum(gateway, "jasmin_credits_lease_messages_total")
        assert send(client, "447911000202").status == 0
        sent += 1
        assert metric_sum(gateway, "jasmin_credits_lease_messages_total") == held + 1
        assert metric_sum(gateway, "jasmin_credits_leases_open") >= 1
    status, _ = http(gateway, "send", to="33612000201", content="d" * 400)
    assert status == 200
    books.wait_settled("alice", start - sent * PRICE["447"] - 3 * PRICE["33"])


def test_errors_and_unqueued_holds_released(gateway, smpp_client, books):
    """An SMSC error is released, and a message with no route by the daemon's sweeper.
    The refund shows in the gateway's metrics, whichever process made it (the module's only
    SMSC error)."""
    start = books.top_up("alice", 10_000)
    client = smpp_client()
    assert send(client, "3398000201").status == 0
    assert send(client, "442071000201").status == 0x0B  # no route
    books.wait_settled("alice", start)
    wait_until(lambda: metric_sum(gateway, "jasmin_credits_refunds_total",
                                  cause="submit_error") == 1,
               20, message="the refund counted in the metrics")
    if gateway.link == "events":  # the daemon read Jasmin's events, and dropped none
        assert metric_sum(gateway, "jasmin_credits_settlement_events_total",
                          event="submit_sm_resp", outcome="settled") >= 1
        assert metric_sum(gateway, "jasmin_credits_settlement_events_total",
                          outcome="dropped") == 0


def metric_sum(gateway, name: str, **labels: str) -> float:
    """``name``'s samples with ``labels`` summed over every metrics endpoint of the gateway
    (what Prometheus would sum)."""
    total = 0.0
    for url in gateway.metrics_urls():
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            total += sum(s.value for s in family.samples if s.name == name
                         and all(s.labels.get(k) == v for k, v in labels.items()))
    return total


def test_our_metrics_pass_promtool_lint(gateway):
    """A real gateway's /metrics (with what its settlement process counted) passes
    Prometheus's lint for our families."""
    for url in gateway.metrics_urls():
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        assert "jasmin_credits_charges_total" in text
        assert lint_metrics(text) == ""
