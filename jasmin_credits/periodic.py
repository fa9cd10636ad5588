"""A job that runs now and then every few seconds of an injected clock."""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

log = logging.getLogger("jasmin-credits")


class PeriodicJob:
    """Runs ``_tick()`` (a coroutine) at once and every ``interval`` seconds of ``clock``.

    Runs never overlap (the loop waits for a run to finish); a failing run is logged and the
    next one runs anyway; ``stop()`` fires once a run in progress has finished. Subclasses
    set ``clock``, ``interval`` and ``job_name`` and write ``_tick``.
    """

    clock: IReactorTime
    interval: float
    job_name = "periodic job"
    _loop: LoopingCall | None = None
    _current: Deferred | None = None

    async def _tick(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        """Run now, then every ``interval`` seconds."""
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.error("%s stopped: %s", self.job_name, f.value))

    def stop(self) -> Deferred:
        """Stop running; fires when a run in progress has finished."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        current = self._current
        if current is None or current.called:
            return succeed(None)
        done: Deferred = Deferred()
        current.addBoth(lambda r: (done.callback(None), r)[1])
        return done

    def tick(self) -> Deferred:
        """One run; never fails (problems are logged, the next run tries again)."""
        d = Deferred.fromCoroutine(self._tick())
        d.addErrback(lambda f: log.error("%s failed: %s", self.job_name, f.getTraceback()))
        self._current = d
        return d
