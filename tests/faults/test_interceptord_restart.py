"""Our drop-in interceptord killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books
from tests.faults.support import ESME_ROK, Load, check_books, credits_gateway, settlement, summary


def test_interceptord_killed_and_restarted_under_load():
    """Holds in flight when the interceptord dies are released; the rest is charged once."""
    overrides = {**settlement(), "charging": {"mode": "interceptor-pb"}}
    with credits_gateway("interceptord", overrides, interceptord=True) as gateway:
        start = Books(gateway).wallet("alice").balance
        load = Load(gateway)
        load.start()
        try:
            load.wait_sent(300)
            gateway.restart_child("interceptord", kill=True)
            killed_at = len(load.result.sent)
            wait_until(lambda: any(s.status == ESME_ROK for s in load.result.sent[killed_at:]),
                       90, message="accepted again after the restart")
            load.wait_sent(300)
        finally:
            result = load.finish()
        books = Books(gateway)
        books_now = check_books(gateway, books, result, start, told_ok_all_sent=False)
        counts = summary(result, books_now)
        print("interceptord restart:", counts)
        assert counts["charged"] == counts["smsc_ok"]
        refused = [s for s in result.sent if s.status not in (ESME_ROK, None)]
        assert refused, "messages sent while the interceptord was down must be refused"
