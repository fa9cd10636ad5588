"""The figures of ``jasmin-credits-settled`` in the ``/metrics`` of the gateway that started it.

With ``settlement.process: child`` (the default) settlement, the sweeper, plans and event
delivery run in the child: without this, the counters they keep (refunds, plan runs, events
published, settlement's events, the store calls' latency) would live in a process nobody
scrapes. The gateway spawns the child with one more pipe (file descriptor 3 in the child,
``--metrics-fd 3``):

- :class:`SnapshotWriter`, in the child, writes its registry's :class:`~.metrics.Snapshot` as
  one JSON line whenever it changed, at most every ``interval`` seconds. It never blocks: the
  pipe is non-blocking, and a line the pipe does not take at once is finished on the next
  tick before anything newer is written.
- :class:`ChildMetrics`, in the gateway, reads those lines and keeps the latest; the gateway's
  registry adds it to its own figures at every scrape. When a run of the child ends, its last
  figures are kept and the next run's are added to them, so the gateway's counters never go
  down when the child restarts (a Prometheus counter must not).

At most ``interval`` seconds of the child's counting is lost when it dies: these are
metrics, not money (every credit change is in Redis).
"""

from __future__ import annotations

import errno
import json
import logging
import os

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from .metrics import Registry, Snapshot

log = logging.getLogger("jasmin-credits.metrics")

METRICS_FD = 3
"""The child's file descriptor of the metrics pipe."""

MAX_LINE = 1 << 20
"""A longer line is not a snapshot of ours: it is dropped."""


class SnapshotWriter:
    """Writes ``registry``'s snapshot to the pipe ``fd`` every ``interval`` s when it changed."""

    def __init__(self, registry: Registry, fd: int, clock: IReactorTime,
                 interval: float = 1.0):
        self.registry = registry
        self.fd: int | None = fd
        self.interval = interval
        os.set_blocking(fd, False)
        self._loop = LoopingCall(self.send)
        self._loop.clock = clock
        self._last = b""
        self._unsent = b""

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop the ticks and try once more to hand over the latest figures."""
        if self._loop.running:
            self._loop.stop()
        self.send()

    def send(self) -> None:
        """Finish the line the pipe took part of, or write the snapshot if it changed."""
        if self.fd is None:
            return
        if not self._unsent:
            line = json.dumps(self.registry.snapshot().to_json(), sort_keys=True,
                              separators=(",", ":")).encode() + b"\n"
            if line == self._last:
                return
            self._last = self._unsent = line
        try:
            written = os.write(self.fd, self._unsent)
        except BlockingIOError:  # the gateway has not read the last ones yet
            return
        except OSError as error:  # EPIPE: the gateway is gone; nobody reads any more
            if error.errno != errno.EPIPE:
                log.warning("metrics pipe: %s; no more figures sent", error)
            self.fd = None
            return
        self._unsent = self._unsent[written:]


class ChildMetrics:
    """What the gateway knows of its child's figures: :meth:`snapshot` is a registry source
    (:attr:`~.metrics.Registry.sources`)."""

    def __init__(self) -> None:
        self._earlier = Snapshot()
        """The last figures of runs of the child that ended."""
        self._current = Snapshot()
        self._buffer = b""
        self._warned = False

    def data_received(self, data: bytes) -> None:
        """Bytes from the pipe: every complete line is a snapshot of the running child."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""
            self._malformed("a line longer than %d bytes" % MAX_LINE)
        for line in lines:
            try:
                self._current = Snapshot.from_json(json.loads(line))
            except ValueError as error:  # json's errors are ValueErrors too
                self._malformed(str(error))

    def child_ended(self) -> None:
        """That run of the child is over: keep its figures, count the next run's on top."""
        self._earlier = self._earlier.plus(self._current)
        self._current = Snapshot()
        self._buffer = b""  # a line cut short by the child's end is not a snapshot

    def snapshot(self) -> Snapshot:
        """Everything the child counted since this gateway started it the first time."""
        return self._earlier.plus(self._current)

    def _malformed(self, why: str) -> None:
        if not self._warned:  # once: a broken child would repeat it every second
            self._warned = True
            log.warning("jasmin-credits-settled sent unreadable metrics (%s): ignored", why)


__all__ = ["METRICS_FD", "ChildMetrics", "SnapshotWriter"]
