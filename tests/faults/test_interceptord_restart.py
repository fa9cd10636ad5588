"""Our drop-in interceptord killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

from tests.faults.support import ESME_ROK, credits_gateway, killed_and_restarted, settlement


def test_interceptord_killed_and_restarted_under_load():
    """Holds in flight when the interceptord dies are released; the rest is charged once."""
    overrides = {**settlement(), "charging": {"mode": "interceptor-pb"}}
    with credits_gateway("interceptord", overrides, interceptord=True) as gateway:
        result, counts = killed_and_restarted(gateway, "interceptord")
        assert counts["charged"] == counts["smsc_ok"]
        refused = [s for s in result.sent if s.status not in (ESME_ROK, None)]
        assert refused, "messages sent while the interceptord was down must be refused"
