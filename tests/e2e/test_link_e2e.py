"""Where a hold meets Jasmin's message id and its outcome, on a real gateway:
``settlement.link: events`` (the default: settlement reads Jasmin's ``submit.sm.*``,
``dlr.submit_sm_resp`` and, with ``dlr_refund`` set as here, ``dlr.deliver_sm`` events from
our queues) or ``queueing`` (opt-in: our launcher links as Jasmin queues the message and
settles the SMSC's answers and receipts as jasmind publishes them; none of our queues is
bound)."""

from __future__ import annotations

import re
import sys
from collections import Counter

import pytest
import yaml

from jasmin_credits.localgateway import ChildProcess, wait_until
from tests.e2e.conftest import wait_received
from tests.e2e.credits_support import PRICE, http, provision_with_routes, running_gateway, send

UDHI = 0x40
SUBMIT_SM_QUEUE = "jasmin_credits.submit_sm"
OUR_QUEUES = {SUBMIT_SM_QUEUE: "submit.sm.*",
              "jasmin_credits.submit_sm_resp": "dlr.submit_sm_resp",
              "jasmin_credits.deliver_sm": "dlr.deliver_sm"}
FAILING = "3398"  # the simulator answers ESME_RINVDSTADR (final: refunded at once)
UNDELIVERED = "3397"  # the simulator's receipt says UNDELIV (refunded by dlr_refund)


@pytest.fixture(scope="module", params=["queueing", "events"])
def gateway(request):
    overrides = {"settlement": {"link": request.param, "unqueued_timeout": 2,
                                "unanswered_timeout": 60, "sweep_interval": 0.5,
                                "dlr_refund": ["UNDELIV"]}}
    smsc_args = ["--fail", f"{FAILING}=ESME_RINVDSTADR", "--dlr-stat", f"{UNDELIVERED}=UNDELIV"]
    with running_gateway(overrides, provision_with_routes, smsc_args=smsc_args) as gw:
        if request.param == "events":
            gw.wait_for_consumers(set(OUR_QUEUES))
        gw.link = request.param
        yield gw


def msgid_of(response) -> str:
    value = response.message_id
    return value.decode() if isinstance(value, bytes) else value


def send_mix(gateway, client, n: int) -> tuple[list[str], int]:
    """Three single SMPP messages, a 3-part UDH message and a 400-character /send (destinations
    numbered ``n``): their message ids and their total price."""
    singles = [send(client, d) for d in (f"4479110{n:05d}", f"336120{n:05d}",
                                         f"120255{n:05d}")]
    udh = [send(client, f"4479112{n:05d}", bytes([5, 0, 3, n % 256, 3, i]) + b"x" * 100,
                esm_class=UDHI) for i in (1, 2, 3)]
    assert [r.status for r in singles + udh] == [0] * 6
    status, body = http(gateway, "send", to=f"336122{n:05d}", content="a" * 400)
    assert status == 200, body
    [http_msgid] = re.findall(r'Success "([^"]+)"', body)
    msgids = [msgid_of(r) for r in singles + udh] + [http_msgid]
    total = PRICE["447"] + PRICE["33"] + PRICE["1"] + 3 * PRICE["447"] + 3 * PRICE["33"]
    return msgids, total


def assert_charged_once(books, msgids: list[str]) -> None:
    """Every message id has exactly one charge entry in alice's credit log."""
    charged = Counter(e.fields["msgid"] for e in books.log("alice") if e.type == "charge")
    assert {m: charged[m] for m in msgids} == {m: 1 for m in msgids}


def test_our_queues_bound_and_consumed_only_with_events(gateway):
    """queueing: none of our queues is bound to submit.sm.*, dlr.submit_sm_resp or
    dlr.deliver_sm, nor consumed (settlement reads nothing from RabbitMQ); events: all are."""
    ours = {(queue, key) for exchange, queue, key in gateway.rabbitmq.bindings()
            if exchange == "messaging" and queue.startswith("jasmin_credits.")}
    consumers = gateway.rabbitmq.queue_consumers()
    if gateway.link == "queueing":
        assert ours == set()
        assert {q: consumers.get(q, 0) for q in OUR_QUEUES} == {q: 0 for q in OUR_QUEUES}
    else:
        assert ours == set(OUR_QUEUES.items())
        assert {q: consumers[q] for q in OUR_QUEUES} == {q: 1 for q in OUR_QUEUES}


def test_every_message_charged_exactly_once(gateway, smpp_client, books):
    """SMPP singles, a 3-part UDH message and a long /send: each message id charged once,
    and the balance falls by exactly their prices."""
    start = books.top_up("alice", 100_000)
    msgids, total = send_mix(gateway, smpp_client(), 1)
    books.wait_settled("alice", start - total)
    assert_charged_once(books, msgids)


def test_an_error_response_refunds(gateway, smpp_client, books):
    """The SMSC refuses a message Jasmin accepted: its hold is released, nothing charged."""
    start = books.top_up("alice", 100_000)
    response = send(smpp_client(), f"{FAILING}1200001")
    assert response.status == 0  # Jasmin queued it; the SMSC answers the error later
    wait_received(gateway, f"{FAILING}1200001")
    books.wait_settled("alice", start)
    assert msgid_of(response) not in {e.fields.get("msgid") for e in books.log("alice")}


def test_an_undelivered_receipt_refunds(gateway, smpp_client, books):
    """settlement.dlr_refund: [UNDELIV]: the message is charged at ESME_ROK, then refunded
    by its UNDELIV receipt; a DELIVRD one stays charged."""
    start = books.top_up("alice", 100_000)
    client = smpp_client()
    refunded = send(client, f"{UNDELIVERED}1200002", registered_delivery=True)
    kept = send(client, "336121200003", registered_delivery=True)
    assert (refunded.status, kept.status) == (0, 0)
    # Jasmin still passes both receipts on to the client (its DLR daemons got the events).
    client.pump(lambda: len(client.delivered) >= 2, timeout=20)
    books.wait_settled("alice", start - PRICE["33"])
    msgids = {msgid_of(refunded), msgid_of(kept)}
    entries = [(e.type, e.fields["msgid"]) for e in books.log("alice")
               if e.fields.get("msgid") in msgids]
    assert sorted(entries) == sorted([("charge", msgid_of(refunded)),
                                      ("refund", msgid_of(refunded)),
                                      ("charge", msgid_of(kept))])


@pytest.mark.parametrize("gateway", ["queueing"], indirect=True)
def test_a_settled_still_on_events_links_again_harmlessly(gateway, smpp_client, books):
    """A jasmin-credits-settled left on link: events (its own queues) links every message a
    second time while the launcher links at queueing: each is still charged once."""
    assert gateway.link == "queueing"
    data = yaml.safe_load(gateway.credits_config.read_text())
    data["settlement"].update(link="events", queue_prefix="jc_old", process="separate")
    config = gateway.rundir / "credits-old.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    old = ChildProcess("settled-old", [sys.executable, "-m", "jasmin_credits.settled",
                                       "--credits-config", str(config),
                                       "--lock-file", str(gateway.rundir / "settled-old")],
                       gateway.env(), gateway.rundir / "log" / "settled-old.out",
                       gateway.rundir)
    try:
        gateway.wait_for_consumers({"jc_old.submit_sm", "jc_old.submit_sm_resp"})
        start = books.top_up("alice", 100_000)
        msgids, total = send_mix(gateway, smpp_client(), 2)
        books.wait_settled("alice", start - total)

        def both_linked() -> bool:
            old.check_alive()
            return gateway.rabbitmq.queue_messages().get("jc_old.submit_sm", 1) == 0

        wait_until(both_linked, 20, interval=0.2, message="the old settled read every event")
        books.wait_settled("alice", start - total)
        assert_charged_once(books, msgids)
    finally:
        old.stop()
