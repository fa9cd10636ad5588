"""rabbitmq-server stopped and started again under SMPP load."""

from __future__ import annotations

import time

from jasmin_credits.localgateway import LocalGateway, wait_until
from tests.e2e.credits_support import Books
from tests.faults.support import (
    ESME_ROK,
    Load,
    check_books,
    credits_gateway,
    settlement,
    summary,
)


def _told_ok_since(load: Load, index: int) -> set[str]:
    return {s.destination for s in load.result.sent[index:] if s.status == ESME_ROK}


def _delivered_since(gateway: LocalGateway, load: Load, index: int) -> bool:
    return bool(_told_ok_since(load, index)
                & {r["destination_addr"] for r in gateway.smsc_received()})


def test_rabbitmq_restarted_under_load():
    """Settlement catches up after a broker restart, and jasmind (our launcher) sends again
    without being restarted: every message told ESME_ROK is sent, and every message the
    SMSC accepted is charged."""
    # (messages queued while the broker was down are sent after it: a long backlog)
    overrides = {**settlement(unanswered_timeout=600, unanswered_policy="refund"),
                 # what jasmind publishes as the broker stops is published again: without
                 # it (the default, faster at window 1) one such message can be lost
                 "amqp": {"publisher_confirms": True}}
    with credits_gateway("rabbitmq", overrides) as gateway:
        start = Books(gateway).wallet("alice").balance
        load = Load(gateway, limit=8000)  # (refusals while jasmind reconnects go fast)
        load.start()
        try:
            load.wait_sent(300)
            consumed = {q for q, n in gateway.rabbitmq.queue_consumers().items() if n}
            stopped_at = time.time()
            gateway.rabbitmq.stop()
            load.wait_sent(20)  # answered while the broker is down
            load.hold()
            down_statuses = load.result.statuses()
            gateway.rabbitmq.start()
            restarted_at = len(load.result.sent)
            load.resume()
            # Jasmin 0.11.1 alone reconnects, but its connector queue (submit.sm.<cid>, not
            # durable) is gone with what it held and its consumer dead: it accepts messages
            # it never sends until jasmind is restarted. Our launcher declares that queue
            # durable and consumes again (and our runs of its DLR daemons theirs).
            assert load.answered_within(50, 60), "not answered after the broker restart"
            wait_until(lambda: _told_ok_since(load, restarted_at), 60, interval=0.1,
                       message="accepted again after the broker restart")
            # The connector first sends the backlog queued before the stop (ingest outruns
            # it): the load waits meanwhile.
            load.hold()
            wait_until(lambda: _delivered_since(gateway, load, restarted_at), 180,
                       interval=0.5, message="delivered again after the broker restart")
            recovered_at = time.time()
            # every queue consumed before (jasmind's, the DLR daemons', settlement's) is again
            gateway.wait_for_consumers(consumed, timeout=60)
            load.resume()
            load.wait_sent(200)
        finally:
            result = load.finish()
        books = Books(gateway)
        # Every message told ESME_ROK reaches the SMSC (the connector's queue is durable,
        # and what the broker had not confirmed at the stop is published again), and every
        # message the SMSC accepted is charged, during the outage too (answers kept while
        # jasmind was disconnected, or published again).
        books_now = check_books(gateway, books, result, start)
        counts = summary(result, books_now)
        counts["sent_in_outage"] = sum(1 for r in gateway.smsc_received()
                                       if stopped_at <= r["received_at"] <= recovered_at)
        print("rabbitmq restart:", counts, "statuses:", dict(result.statuses()),
              "while down:", dict(down_statuses))
        assert counts["charged"] == counts["smsc_ok"]
        # every message told ESME_ROK once jasmind sent again reaches the SMSC
        told_ok = {s.destination for s in result.sent
                   if s.status == ESME_ROK and s.answered_at >= recovered_at}
        assert len(told_ok) >= 200
        wait_until(lambda: told_ok <= {r["destination_addr"] for r in gateway.smsc_received()},
                   60, interval=0.5, message="every message accepted after the restart sent")
