"""Our jasmind launcher killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books
from tests.faults.support import ESME_ROK, Load, check_books, credits_gateway, summary


def test_launcher_killed_and_restarted_under_load():
    """Reservations in flight when jasmind dies are settled exactly once after its restart."""
    with credits_gateway("jasmind") as gateway:
        with gateway.jcli() as jcli:
            jcli.run("persist")  # jasmind reloads users, connector, routes at start
        start = Books(gateway).wallet("alice").balance
        load = Load(gateway)
        load.start()
        try:
            load.wait_sent(300)
            gateway.restart_child("jasmind", kill=True)
            gateway.wait_connector_bound("smsc")
            killed_at = len(load.result.sent)
            wait_until(lambda: any(s.status == ESME_ROK for s in load.result.sent[killed_at:]),
                       90, message="accepted again after the restart")
            load.wait_sent(300)
        finally:
            result = load.finish()
        books = Books(gateway)
        books_now = check_books(gateway, books, result, start, told_ok_all_sent=False)
        counts = summary(result, books_now)
        print("jasmind restart:", counts)
        assert counts["no_answer"] > 0 and counts["reconnects"] >= 1
        assert counts["charged"] == counts["smsc_ok"]
