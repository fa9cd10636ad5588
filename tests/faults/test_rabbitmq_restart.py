"""rabbitmq-server stopped and started again under SMPP load."""

from __future__ import annotations

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books
from tests.faults.support import (
    ESME_ROK,
    Load,
    check_books,
    credits_gateway,
    settlement,
    summary,
)


def test_rabbitmq_restarted_under_load():
    """Settlement catches up after a broker restart; lost events are settled by the sweeper."""
    overrides = settlement(unanswered_timeout=20, unanswered_policy="refund")
    with credits_gateway("rabbitmq", overrides) as gateway:
        start = Books(gateway).wallet("alice").balance
        load = Load(gateway)
        load.start()
        try:
            load.wait_sent(300)
            gateway.rabbitmq.stop()
            load.wait_sent(20)
            gateway.rabbitmq.start()
            restarted_at = len(load.result.sent)
            def delivered_again() -> bool:
                ok = {s.destination for s in load.result.sent[restarted_at:]
                      if s.status == ESME_ROK}
                return bool(ok & {r["destination_addr"] for r in gateway.smsc_received()})

            wait_until(delivered_again, 120, interval=0.5,
                       message="accepted and delivered again after the restart")
            load.wait_sent(300)
        finally:
            result = load.finish()
        books = Books(gateway)
        books_now = check_books(gateway, books, result, start, told_ok_all_sent=False)
        counts = summary(result, books_now)
        print("rabbitmq restart:", counts, result.statuses())
        assert counts["charged"] == counts["smsc_ok"]
