"""Our jasmind launcher killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

from tests.faults.support import credits_gateway, killed_and_restarted


def test_launcher_killed_and_restarted_under_load():
    """Reservations in flight when jasmind dies are settled exactly once after its restart."""
    with credits_gateway("jasmind") as gateway:
        with gateway.jcli() as jcli:
            jcli.run("persist")  # jasmind reloads users, connector, routes at start
        _, counts = killed_and_restarted(gateway, "jasmind")
        assert counts["no_answer"] > 0 and counts["reconnects"] >= 1
        assert counts["charged"] == counts["smsc_ok"]
