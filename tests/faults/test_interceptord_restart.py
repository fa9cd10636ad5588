"""Our drop-in interceptord killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

from tests.e2e.credits_support import Books
from tests.faults.support import (
    ESME_ROK,
    check_books,
    credits_gateway,
    restart_under_load,
    settlement,
    summary,
)


def test_interceptord_killed_and_restarted_under_load():
    """Holds in flight when the interceptord dies are released; the rest is charged once."""
    overrides = {**settlement(), "charging": {"mode": "interceptor-pb"}}
    with credits_gateway("interceptord", overrides, interceptord=True) as gateway:
        start = Books(gateway).wallet("alice").balance
        result = restart_under_load(gateway, "interceptord")
        books = Books(gateway)
        books_now = check_books(gateway, books, result, start, told_ok_all_sent=False)
        counts = summary(result, books_now)
        print("interceptord restart:", counts)
        assert counts["charged"] == counts["smsc_ok"]
        refused = [s for s in result.sent if s.status not in (ESME_ROK, None)]
        assert refused, "messages sent while the interceptord was down must be refused"
