"""SettledChild: when the launcher starts, restarts and gives up on its settled child."""

from __future__ import annotations

import json

from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from jasmin_credits.metrics import CreditMetrics
from jasmin_credits.settled_child import LOCKED, SettledChild

from .test_metrics import sample


class Reactor(Clock):
    """A clock that records spawnProcess calls (fast unit test: no process is started)."""

    def __init__(self):
        super().__init__()
        self.spawned: list[tuple[float, list[str]]] = []

    def spawnProcess(self, protocol, executable, args, env=None,  # noqa: N802 - Twisted API
                     childFDs=None):  # noqa: N803 - Twisted API
        self.spawned.append((self.seconds(), args))
        self.protocol = protocol
        self.child_fds = childFDs
        return object()


def test_child_is_told_to_stop_with_its_parent():
    reactor = Reactor()
    SettledChild(reactor, "/etc/jasmin/credits.yaml").start()
    assert "--exit-with-parent" in reactor.spawned[0][1]
    assert "--nice" not in reactor.spawned[0][1]


def test_child_is_told_its_niceness():
    reactor = Reactor()
    SettledChild(reactor, "/etc/jasmin/credits.yaml", nice=10).start()
    argv = reactor.spawned[0][1]
    assert argv[argv.index("--nice") + 1] == "10"


def test_lock_taken_keeps_trying_with_back_off():
    """Another gateway's child holds the lock (or a killed launcher's child is still
    stopping): try again, 1 s, 2 s, 4 s later..., so this gateway takes over."""
    reactor = Reactor()
    child = SettledChild(reactor, "/etc/jasmin/credits.yaml", max_delay=4)
    child.start()
    for expected_delay in (1, 2, 4, 4):
        reactor.advance(0.5)
        child._ended(LOCKED)
        before = len(reactor.spawned)
        reactor.advance(expected_delay - 0.01)
        assert len(reactor.spawned) == before
        reactor.advance(0.01)
        assert len(reactor.spawned) == before + 1


def test_back_off_resets_after_a_long_run():
    reactor = Reactor()
    child = SettledChild(reactor, "/etc/jasmin/credits.yaml", max_delay=4)
    child.start()
    for _ in range(3):
        child._ended(1)
        reactor.advance(child.delay)
    assert child.delay == 4
    reactor.advance(60)  # the last one ran for a minute
    child._ended(1)
    reactor.advance(1)
    assert reactor.spawned[-1][0] == reactor.seconds()


def test_stop_cancels_a_pending_restart():
    reactor = Reactor()
    child = SettledChild(reactor, "/etc/jasmin/credits.yaml")
    child.start()
    child._ended(1)
    child.stop()
    reactor.advance(60)
    assert len(reactor.spawned) == 1


def test_child_lines_are_forwarded_at_their_own_level(caplog):
    """The launcher logs each line of its child at the level the child gave it, and a
    traceback's lines at the level of the entry they belong to."""
    import logging

    from jasmin_credits.settled_child import _ChildProtocol

    child = _ChildProtocol(owner=None)
    caplog.set_level(logging.DEBUG, logger="jasmin-credits.settled")
    child.outReceived(
        b"2026-11-27 00:36:20,478 WARNING  jasmin-credits.settlement requeued in 5.0s\n"
        b"2026-11-27 00:36:21,001 ERROR    jasmin-credits.settlement cannot settle: dropped\n"
        b"Traceback (most recent call last):\n"
        b"2026-11-27 00:36:22,000 INFO     jasmin-credits.sweeper sweep: 1 released\n"
        b"2026-11-27 00:36:2")
    assert [(r.levelno, r.getMessage().split()[-1]) for r in caplog.records] == [
        (logging.WARNING, "5.0s"), (logging.ERROR, "dropped"), (logging.ERROR, "last):"),
        (logging.INFO, "released")]


def test_child_figures_reach_the_gateways_metrics_and_survive_its_restart():
    """The child writes its figures to a pipe of their own (fd 3); the gateway's /metrics
    adds them to its own, and keeps a dead run's figures under the next run's (a counter
    never goes down)."""
    reactor = Reactor()
    metrics = CreditMetrics()
    metrics.refunded("dlr")  # the gateway's own
    child = SettledChild(reactor, "/etc/jasmin/credits.yaml", metrics=metrics)
    child.start()
    argv = reactor.spawned[0][1]
    assert argv[argv.index("--metrics-fd") + 1] == "3" and reactor.child_fds[3] == "r"

    def run_counted(refunds: int) -> bytes:
        figures = CreditMetrics()
        for _ in range(refunds):
            figures.refunded("submit_error")
        return json.dumps(figures.registry.snapshot().to_json()).encode() + b"\n"

    line = run_counted(2)
    reactor.protocol.childDataReceived(3, line[:10])  # a pipe hands over any piece
    reactor.protocol.childDataReceived(3, line[10:] + run_counted(3)[:7])
    assert metrics.render().count("refunds_total{") == 2
    assert sample(metrics.render(), "jasmin_credits_refunds_total", cause="submit_error") == 2
    reactor.protocol.processEnded(Failure(ProcessTerminated(exitCode=1)))  # a cut line: lost
    reactor.advance(child.delay)
    reactor.protocol.childDataReceived(3, run_counted(1))
    text = metrics.render()
    assert sample(text, "jasmin_credits_refunds_total", cause="submit_error") == 3
    assert sample(text, "jasmin_credits_refunds_total", cause="dlr") == 1


def test_child_without_metrics_gets_no_pipe():
    reactor = Reactor()
    SettledChild(reactor, "/etc/jasmin/credits.yaml").start()
    assert "--metrics-fd" not in reactor.spawned[0][1] and 3 not in reactor.child_fds
