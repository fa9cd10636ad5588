"""``settlement.process: child``: the gateway starts ``jasmin-credits-settled`` itself.

Settlement inside jasmind costs its single reactor CPU for every event it handles (about
150-200 µs per message under ``settlement.link: events``, where it reads a copy of every
message Jasmin queues and every answer; 400 before ``amqp.ConsumerClient``'s short path and
the tag headers of :mod:`jasmin_credits.tagheaders`); in a separate process it runs on
another core
(docs/benchmarks.md). Under ``settlement.link: queueing`` the gateway still links holds as
Jasmin queues them and settles the SMSC's answers as jasmind publishes them; the child reads
the same config, so it knows to consume none of Jasmin's events (it sweeps, runs plans and
delivers events). This keeps that process as easy to deploy as no process at all: the
launcher (or our interceptord) spawns it with the same config, forwards its log lines,
restarts it if it dies (back-off up to 30 s) and stops it on shutdown. The child also
stops by itself when its parent dies, even by SIGKILL (its stdin, a pipe from the parent,
reaches end of file), so a restarted gateway's new child takes over; under systemd the
child is in the service's control group as well.

Two gateway processes on one machine with the same config (our launcher and our
interceptord) run one child between them: the second one's child finds the lock taken and
exits with status 1 (before loading anything), and that parent tries again at the back-off
interval, so it takes over when the other gateway goes away.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed

from .child_metrics import METRICS_FD, ChildMetrics
from .metrics import CreditMetrics

log = logging.getLogger("jasmin-credits.settled")

LOCKED = 1
"""Exit status of ``jasmin-credits-settled`` when another one holds its lock."""


def lock_path(config_path: str) -> str:
    """One lock per config file and machine."""
    digest = hashlib.sha1(os.path.abspath(config_path).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"jasmin-credits-settled-{digest}")


def line_level(line: str, previous: int) -> int:
    """The level of one line the child logged (``settled.py``'s format: date, time, level,
    ...); a line without one (a traceback's) continues the previous line's entry."""
    fields = line.split(None, 3)
    if len(fields) > 2 and fields[0][:1].isdigit():
        return logging.getLevelNamesMapping().get(fields[2], previous)
    return previous


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: SettledChild):
        self.owner = owner
        self.buffer = b""
        self.level = logging.INFO

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            # at the child's own level: jasmind shows warnings and errors (where a
            # post-mortem looks first), whatever it does with INFO
            text = line.decode(errors="replace")
            self.level = line_level(text, self.level)
            log.log(self.level, "%s", text)

    errReceived = outReceived  # noqa: N815 - Twisted API

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        if childFD == METRICS_FD:
            if self.owner.metrics is not None:
                self.owner.metrics.data_received(data)
            return
        super().childDataReceived(childFD, data)

    def processEnded(self, reason: Any) -> None:  # noqa: N802 - Twisted API
        # Twisted calls this once the child exited and every pipe is closed, so the last
        # line of figures it sent has been read
        if self.owner.metrics is not None:
            self.owner.metrics.child_ended()
        self.owner._ended(getattr(reason.value, "exitCode", None))


class SettledChild:
    """Runs ``python -m jasmin_credits.settled --credits-config PATH`` as a child.

    ``metrics``: the gateway's own; the child's figures are added to them
    (:mod:`jasmin_credits.child_metrics`), read from a pipe of their own. ``nice``: the
    child lowers its priority by that much (``settlement.nice``), so that on a busy machine
    jasmind's answers go first and settlement, which can wait, takes what is left.
    """

    def __init__(self, reactor: Any, config_path: str, *, max_delay: float = 30.0,
                 metrics: CreditMetrics | None = None, nice: int = 0):
        self.reactor = reactor
        self.nice = nice
        self.metrics: ChildMetrics | None = None
        if metrics is not None:
            self.metrics = ChildMetrics()
            metrics.registry.sources.append(self.metrics.snapshot)
        self.config_path = config_path
        self.max_delay = max_delay
        self.delay = 1.0
        self.process: Any = None
        self.stopping = False
        self.starts = 0
        self.started_at = 0.0
        self._stopped: Deferred | None = None
        self._restart: Any = None

    def start(self) -> None:
        self.starts += 1
        self.started_at = self.reactor.seconds()
        argv = [sys.executable, "-m", "jasmin_credits.settled",
                "--credits-config", self.config_path,
                "--lock-file", lock_path(self.config_path), "--exit-with-parent"]
        if self.nice:
            argv += ["--nice", str(self.nice)]
        fds = {0: "w", 1: "r", 2: "r"}
        if self.metrics is not None:
            argv += ["--metrics-fd", str(METRICS_FD)]
            fds[METRICS_FD] = "r"
        self.process = self.reactor.spawnProcess(_ChildProtocol(self), sys.executable, argv,
                                                 env=dict(os.environ), childFDs=fds)

    def _ended(self, code: int | None) -> None:
        self.process = None
        if self.stopping:
            if self._stopped is not None:
                self._stopped.callback(None)
            return
        if self.reactor.seconds() - self.started_at >= self.max_delay:
            self.delay = 1.0  # it ran a good while: this is a new failure, not a loop
        if code == LOCKED:
            if self.starts == 1:
                log.info("jasmin-credits-settled already runs for %s; this gateway takes "
                         "over if it stops", self.config_path)
        else:
            log.error("jasmin-credits-settled exited (%s); restarting in %.0f s", code,
                      self.delay)
        self._restart = self.reactor.callLater(self.delay, self.start)
        self.delay = min(self.delay * 2, self.max_delay)

    def stop(self) -> Deferred:
        """SIGTERM the child; fires when it has exited."""
        self.stopping = True
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        if self.process is None:
            return succeed(None)
        self._stopped = Deferred()
        try:
            self.process.signalProcess("TERM")
        except Exception:  # already gone
            return succeed(None)
        return self._stopped
