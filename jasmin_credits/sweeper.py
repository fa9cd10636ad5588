"""Settle the reservations that no event settled.

Every ``interval`` seconds, for each user with open reservations:

- a reservation older than ``unqueued_timeout`` gives back its parts Jasmin never queued
  (``store.release``): the message failed before queueing (no route, throttled, refused
  by Jasmin's own billing), or it was an HTTP ``/rate`` call, which runs the interceptor too;
- a reservation older than ``unanswered_timeout`` is expired (``store.expire``): unqueued
  parts are given back and queued parts with no answer from the SMSC are settled by
  ``unanswered_policy`` (``refund`` or ``commit``). This also settles errors Jasmin retried
  until it gave up, since Jasmin never says which attempt was the last (see
  :mod:`jasmin_credits.settlement`).

``unqueued_timeout`` must exceed the longest time a message can wait before Jasmin queues it
*and* its link is written (at once by our launcher, or when our consumer reads the
``submit.sm`` event under ``settlement.link: events``); a link that comes later still charges
(the store holds the credits again), but the credits were available in between.

Credit leases (:mod:`jasmin_credits.leasing`) past their deadline are ended too
(``store.end_lease``): their gateway died before publishing the end marker.

Runs never overlap (``LoopingCall`` waits for a run to finish); an error is logged and the
next run retries. Several sweepers on one Redis are safe: the store's operations are
idempotent, so a reservation is settled once whoever gets there first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from .errors import StoreUnavailable
from .store import CreditStore, created_ms

log = logging.getLogger("jasmin-credits.sweeper")


@dataclass
class SweepStats:
    """What one run did."""

    users: int = 0
    released: int = 0
    expired: int = 0
    leases: int = 0
    errors: int = 0


class Sweeper:
    """Releases and expires old reservations on a timer driven by ``clock``."""

    def __init__(
        self,
        store: CreditStore,
        *,
        clock: IReactorTime,
        unqueued_timeout: float = 600.0,
        unanswered_timeout: float = 86_400.0,
        unanswered_policy: str = "refund",
        interval: float = 30.0,
    ):
        if unanswered_policy not in ("refund", "commit"):
            raise ValueError("unanswered_policy must be 'refund' or 'commit'")
        if not 0 < unqueued_timeout < unanswered_timeout:
            raise ValueError("need 0 < unqueued_timeout < unanswered_timeout")
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.store = store
        self.clock = clock
        self.unqueued_timeout = unqueued_timeout
        self.unanswered_timeout = unanswered_timeout
        self.unanswered_policy = unanswered_policy
        self.interval = interval
        self.runs = 0
        self.last: SweepStats | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._done: Deferred | None = None

    def start(self) -> Deferred:
        """Run every ``interval`` seconds, the first run one interval from now."""
        if not self._loop.running:
            self._done = self._loop.start(self.interval, now=False)
            self._done.addErrback(lambda f: log.error("sweeper stopped: %s", f.getTraceback()))
        return succeed(None)

    def stop(self) -> Deferred:
        """Stop the timer; the Deferred fires when a run in progress has finished."""
        if not self._loop.running:
            return succeed(None)
        done = self._done
        self._loop.stop()
        return done if done is not None else succeed(None)

    def _tick(self) -> Deferred:
        return Deferred.fromCoroutine(self._safe_sweep())

    async def _safe_sweep(self) -> None:
        try:
            await self.sweep_once()
        except StoreUnavailable as error:  # expected while Redis restarts: no traceback
            log.warning("sweep failed (%s); the next run retries", error)
        except Exception:
            log.exception("sweep failed; the next run retries")

    async def sweep_once(self) -> SweepStats:
        """One pass over every user with open reservations."""
        stats = SweepStats()
        now_ms = int(self.clock.seconds() * 1000)
        unqueued_before = now_ms - int(self.unqueued_timeout * 1000)
        unanswered_before = now_ms - int(self.unanswered_timeout * 1000)
        for uid, lease_id in await self.store.expired_leases(now_ms):
            try:
                if await self.store.end_lease(uid, lease_id) is not None:
                    stats.leases += 1
            except Exception as error:
                stats.errors += 1
                log.warning("ending lease %s of %s failed (%s); the next run retries",
                            lease_id, uid, error)
        for uid in await self.store.users_with_open_reservations():
            stats.users += 1
            try:
                await self._sweep_user(uid, unqueued_before, unanswered_before, stats)
            except Exception as error:
                stats.errors += 1
                log.warning("sweeping %s failed (%s); the next run retries", uid, error)
        self.runs += 1
        self.last = stats
        if stats.released or stats.expired or stats.leases or stats.errors:
            log.info("sweep: %d released, %d expired, %d leases ended, %d errors over %d "
                     "users", stats.released, stats.expired, stats.leases, stats.errors,
                     stats.users)
        return stats

    async def _sweep_user(self, uid: str, unqueued_before: int, unanswered_before: int,
                          stats: SweepStats) -> None:
        for ref in await self.store.open_reservations(uid, unqueued_before):
            created = _created(ref)
            if created is not None and created < unanswered_before:
                await self.store.expire(uid, ref, self.unanswered_policy)
                stats.expired += 1
                continue
            # Most open reservations past the unqueued timeout are queued and awaiting
            # their response: a read is cheaper than a release that changes nothing.
            record = await self.store.reservation(uid, ref)
            if not record:
                log.debug("open reservation %s of %s has no record (expired)", ref, uid)
                continue
            if _int(record.get("unlinked")) == 0:
                continue
            await self.store.release(uid, ref)
            stats.released += 1


def _created(ref: str) -> int | None:
    try:
        return created_ms(ref)
    except ValueError:
        return None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
