"""Our jasmind launcher killed with SIGKILL under SMPP load, then restarted."""

from __future__ import annotations

import time

import pytest

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books, settled_processes
from tests.faults.support import credits_gateway, killed_and_restarted, leases, settlement


@pytest.mark.parametrize("process, lease", [("gateway", False), ("child", False),
                                            ("child", True)])
def test_launcher_killed_and_restarted_under_load(process, lease):
    """Reservations in flight when jasmind dies are settled exactly once after its restart,
    whether jasmind settles them itself or its ``jasmin-credits-settled`` child does, and
    with credit leases: messages held in the dead jasmind's memory are charged from their
    events, and the restarted launcher gives back what the dead one's leases did not hold
    (the sweeper would, at their deadline).

    Only jasmind's own process is killed (as the OOM killer would): its child notices and
    stops, and the restarted launcher's child takes over (the lock a SIGKILLed process
    held is free at once)."""
    overrides = settlement(process=process)
    # Leases that outlive the test unless ended: the sweeper would end the dead run's only
    # at their deadline (seconds + unqueued_timeout), so the books below, settled well
    # before it, show that the restarted launcher ended them.
    overrides["charging"] = leases(lease, messages=50, seconds=300, idle_seconds=2)
    with credits_gateway("jasmind", overrides) as gateway:
        with gateway.jcli() as jcli:
            jcli.run("persist")  # jasmind reloads users, connector, routes at start
        if process == "child":
            wait_until(lambda: settled_processes(gateway.credits_config), 30,
                       message="the launcher's jasmin-credits-settled running")
        books = Books(gateway)
        left: list[tuple[str, float]] = []
        _, counts = killed_and_restarted(
            gateway, "jasmind", group=False,
            before_kill=lambda: left.extend(open_leases(books)) if lease else None)
        assert counts["no_answer"] > 0 and counts["reconnects"] >= 1
        assert counts["charged"] == counts["smsc_ok"]
        if lease:
            assert left, "the dead run held leases"
            assert time.time() * 1000 < min(deadline for _, deadline in left)
            assert not open_leases(books)
        if process == "child":
            # the books above needed a settler after the restart: the new launcher's child
            parents = [ppid for _, ppid in settled_processes(gateway.credits_config)]
            assert parents == [gateway.children["jasmind"].process.pid]


def open_leases(books: Books) -> list[tuple[str, float]]:
    """Every open lease in Redis, ``("<uid> <lease id>", deadline in ms)``."""
    return books.store.redis.client.zrange(books.store.keys.leases, 0, -1, withscores=True)
