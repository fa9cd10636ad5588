"""Our drop-in interceptord killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

import pytest

from tests.faults.support import (
    ESME_ROK,
    credits_gateway,
    killed_and_restarted,
    leases,
    settlement,
)


@pytest.mark.parametrize("lease", [False, True])
def test_interceptord_killed_and_restarted_under_load(lease):
    """Holds in flight when the interceptord dies are released; the rest is charged once.
    With credit leases (the default), the messages the dead run answered from its lease are
    written by settlement from their events, and the restarted interceptord ends the leases
    its previous run left (it claims the same gateway name: same host and lock file) once
    the dead run's claim expired; ``seconds`` 30 keeps the sweeper from ending them first."""
    overrides = {**settlement(),
                 "charging": {"mode": "interceptor-pb",
                              **leases(lease, messages=50, seconds=30, idle_seconds=1)}}
    with credits_gateway("interceptord", overrides, interceptord=True) as gateway:
        result, counts = killed_and_restarted(gateway, "interceptord")
        assert counts["charged"] == counts["smsc_ok"]
        refused = [s for s in result.sent if s.status not in (ESME_ROK, None)]
        assert refused, "messages sent while the interceptord was down must be refused"
        if lease:
            log = (gateway.rundir / "log" / "interceptor.log").read_text(errors="replace")
            assert "stopped uncleanly with" in log, "the dead run's leases ended by its successor"
