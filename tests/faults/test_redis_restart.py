"""redis-server (AOF, fsync always) killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

import pytest

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books
from tests.faults.support import (
    ESME_RMSGQFUL,
    ESME_ROK,
    Load,
    check_books,
    credits_gateway,
    leases,
    settlement,
    summary,
)


@pytest.mark.parametrize("lease", [False, True])
def test_redis_killed_and_restarted_under_load(lease):
    """Refused with store_unavailable while Redis is down; every accepted message charged once.

    With credit leases, jasmind goes on accepting single messages against the credit it
    leased before the kill, until that runs out (10 messages a lease, two at most), then
    refuses; settlement writes their holds once Redis is back."""
    overrides = settlement()
    overrides["charging"] = leases(lease, messages=10, seconds=2)
    with credits_gateway("redis", overrides, redis_aof=True) as gateway:
        start = Books(gateway).wallet("alice").balance
        load = Load(gateway)
        load.start()
        try:
            load.wait_sent(200)
            gateway.redis.kill()
            load.wait_sent(30)  # answered while Redis is down
            down = len(load.result.sent)
            gateway.redis.start()
            wait_until(lambda: any(s.status == ESME_ROK for s in load.result.sent[down:]), 60,
                       message="accepted again after the restart")
            load.wait_sent(200)
        finally:
            result = load.finish()
        books = Books(gateway)
        books_now = check_books(gateway, books, result, start)
        counts = summary(result, books_now)
        print("redis restart:", counts)
        assert set(result.statuses()) <= {ESME_ROK, ESME_RMSGQFUL, None}, result.statuses()
        assert counts["told_error"] > 0 and counts["told_ok"] > 0
        assert counts["charged"] == counts["smsc_ok"]
