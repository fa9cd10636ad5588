"""Our jasmind launcher killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

from tests.e2e.credits_support import Books
from tests.faults.support import check_books, credits_gateway, restart_under_load, summary


def test_launcher_killed_and_restarted_under_load():
    """Reservations in flight when jasmind dies are settled exactly once after its restart."""
    with credits_gateway("jasmind") as gateway:
        with gateway.jcli() as jcli:
            jcli.run("persist")  # jasmind reloads users, connector, routes at start
        start = Books(gateway).wallet("alice").balance
        result = restart_under_load(gateway, "jasmind")
        books = Books(gateway)
        books_now = check_books(gateway, books, result, start, told_ok_all_sent=False)
        counts = summary(result, books_now)
        print("jasmind restart:", counts)
        assert counts["no_answer"] > 0 and counts["reconnects"] >= 1
        assert counts["charged"] == counts["smsc_ok"]
