"""Credit leases: single messages held from the gateway's memory, no Redis call each.

With ``charging.lease.messages`` set, our launcher's jasmind takes, per user sending, a
lease: credits (and room under the user's message limits) carved out of the wallet in one
atomic Redis call (``lua/lease_take.lua``). While the lease lasts, a single message (one
PDU, or one HTTP ``/send`` chain) is held against it in memory: no round trip to Redis
before the client's answer, which is what a hold costs at window 1 (docs/benchmarks.md).

Nothing is lost or charged twice:

- The message's tag carries the whole hold (price, parts, quote, lease id) into Jasmin's
  ``submit.sm.*`` message. Settlement reads it from its durable queue and writes the
  reservation from the lease (``lua/lease_hold.lua``, idempotent on the ref), then links
  it: from there on it is an ordinary reservation (charged on ``ESME_ROK``, refunded, swept).
- A lease ends with a marker the gateway publishes on Jasmin's own AMQP channel, behind
  every message held against it; settlement, reading it after them, gives back what the
  lease did not hold (``lua/lease_end.lua``). A gateway that dies publishes no marker:
  started again, it publishes the markers of the leases its previous run left (Redis keeps
  a set of them per gateway name, and one running gateway per name:
  :mod:`jasmin_credits.gatewayname`), behind whatever that run queued; a gateway that does
  not come back has its leases ended by the sweeper at their deadline (``seconds`` +
  ``settlement.unqueued_timeout``).
- A message whose lease ended first (its event requeued after a Redis failure, read after
  the marker) is held from the wallet instead, even below zero, with a ``late_hold``
  event: it was accepted, so it is charged.

Several gateways on one Redis each carve their own leases, so together they never hold
more than the wallet (and its limits) allow. A lease never takes the wallet below its
low-balance threshold, and counts against the limits until it is used or given back;
when the wallet cannot grant one, messages are held one by one as without leases.
Concatenated SMPP parts are always held one by one (their parts share a reservation).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater

from .errors import StoreUnavailable
from .gatewayname import GatewayName
from .metrics import NO_METRICS
from .store import CreditStore, new_ref

log = logging.getLogger("jasmin-credits")

MAX_UNPUBLISHED = 10_000
"""End markers kept for another attempt at most; beyond, the sweeper ends those leases at
their deadline (``seconds`` + ``settlement.unqueued_timeout``)."""


@dataclass
class Lease:
    """One open lease, as the gateway that took it counts it."""

    id: str
    uid: str
    credits: int
    messages: int
    left: int
    messages_left: int
    periods: list[str]
    """Day, week and month it was taken in: it holds only messages of those."""
    until: float
    """When it stops holding (clock seconds)."""
    used_at: float
    epoch: int = 0
    """The wallet's lease epoch it was granted under (see :meth:`LeaseBook.check_epochs`)."""


class LeaseBook:
    """The leases of one gateway process, by user.

    ``publish_end(uid, lease_id)`` publishes the end marker on Jasmin's AMQP channel (see
    the module's docstring); when it raises or its Deferred fails, the marker is published
    again at the next tick where ``ready()``. ``messages``: a lease is asked for that many
    messages at the price of the message that asks; ``seconds``: how long one holds;
    ``idle``: a lease unused that long ends; ``grace``: how long after ``seconds`` the
    sweeper waits for the marker; ``retry``: after a refused or failed request, how long a
    user's messages are held one by one before the next request; ``end_delay``: a replaced
    lease's marker waits that long, so messages still between charging and queueing go
    before it; ``stop_delay``: on :meth:`stop`, the markers wait that long (0: jasmind
    itself is stopping, so nothing more is queued); ``metrics`` counts lease requests by
    outcome (:class:`~jasmin_credits.metrics.CreditMetrics` reads the rest from the book).

    ``gateway`` names this gateway's leases in Redis (None: not named, left to the sweeper
    if the process dies). The book takes leases only while it holds that name
    (:class:`~jasmin_credits.gatewayname.GatewayName`: one running gateway per name), and
    once ``ready()`` says markers can be published, it ends the leases an earlier run of the
    same gateway left open.
    """

    def __init__(self, store: CreditStore, clock: IReactorTime,
                 publish_end: Callable[[str, str], Any], *, messages: int,
                 seconds: float = 30.0, idle: float = 10.0, grace: float = 600.0,
                 retry: float = 1.0, end_delay: float = 1.0, stop_delay: float = 0.0,
                 gateway: str | None = None, ready: Callable[[], bool] = lambda: True,
                 metrics: Any = NO_METRICS):
        if messages < 1:
            raise ValueError("a lease holds at least one message")
        self.store = store
        self.clock = clock
        self.publish_end = publish_end
        self.messages = messages
        self.seconds = seconds
        self.idle = idle
        self.grace = grace
        self.retry = retry
        self.end_delay = end_delay
        self.stop_delay = stop_delay
        self._leases: dict[str, list[Lease]] = {}
        self._asking: dict[str, Deferred] = {}
        self._quiet_until: dict[str, float] = {}
        self.name = GatewayName(store, gateway, clock) if gateway is not None else None
        self.ready = ready
        self.metrics = metrics
        self.held = 0
        """Messages held on leases so far (those given back included): a metric."""
        self._unpublished: list[tuple[str, str]] = []
        """End markers the broker did not take (user, lease id): published again at a tick
        once ``ready()``, so a broker outage does not leave leases' credit reserved until
        the sweeper's deadline."""
        self._own: set[str] = set()
        """Ids of the leases this book asked for before it ended its predecessor's."""
        self.predecessors: Deferred = Deferred() if gateway is not None else succeed(0)
        """Fires with the number of leases of an earlier run this book ended."""
        self._keeping = False
        self._checking = False
        self._shrinking: dict[str, set[Deferred]] = {}
        """Leases of each user an operator's cut ended, being shrunk in Redis (:meth:`_cut`)."""
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    @property
    def gateway(self) -> str | None:
        """The name this gateway's leases are kept under in Redis (None: not named)."""
        return self.name.name if self.name is not None else None

    # -- the per-message path -------------------------------------------------------------

    def hold(self, uid: str, amount: int, periods: list[str]) -> Lease | None:
        """Hold ``amount`` credits and one message of ``uid``'s leases, or answer None: hold
        it in Redis, then :meth:`ask` (not before: the lease would take its credit).

        A user has at most two leases: the one holding messages and the next one, asked for
        once the first is half used. The first holds until a message no longer fits in it,
        so what it gives back at its end is less than one message."""
        now = self.clock.seconds()
        leases = self._leases.get(uid)
        while leases:
            lease = leases[0]
            fits = lease.left >= amount and lease.messages_left >= 1
            if lease.until <= now or lease.periods != periods or (not fits and len(leases) > 1):
                self._retire(lease)
                leases = self._leases.get(uid)
                continue
            if not fits:
                return None  # (kept: smaller messages may still fit)
            lease.left -= amount
            lease.messages_left -= 1
            lease.used_at = now
            self.held += 1
            if len(leases) == 1 and (lease.messages_left * 2 < lease.messages
                                     or lease.left * 2 < lease.credits):
                self._ask(uid, amount, now)  # the next one is ready before this one ends
            return lease
        return None

    def ask(self, uid: str, amount: int) -> None:
        """Ask for a lease of messages of about ``amount`` for ``uid``, in the background
        (unless one is being asked for, the next one is ready, or a request was refused less
        than ``retry`` ago)."""
        self._ask(uid, amount, self.clock.seconds())

    def give_back(self, lease: Lease, amount: int) -> None:
        """A message held against ``lease`` was not queued: it holds nothing."""
        if any(held is lease for held in self._leases.get(lease.uid, ())):
            lease.left += amount
            lease.messages_left += 1

    # -- taking and ending leases -----------------------------------------------------------

    def _ask(self, uid: str, amount: int, now: float) -> None:
        if (uid in self._asking or self._quiet_until.get(uid, 0.0) > now
                or len(self._leases.get(uid, ())) > 1
                or (self.name is not None and not self.name.held)):
            return
        asking = Deferred.fromCoroutine(self._take(uid, amount))
        asking.addErrback(
            lambda f: log.error("taking a credit lease failed: %s", f.getTraceback()))
        if not asking.called:  # (Redis already down answers at once)
            self._asking[uid] = asking

    def requests(self) -> Deferred:
        """Fires once the lease requests made so far have been answered."""
        return DeferredList(list(self._asking.values()))

    async def _take(self, uid: str, amount: int) -> None:
        now_ms = self.store.now_ms()
        deadline_ms = now_ms + int((self.seconds + self.grace) * 1000)
        lease_id = new_ref(now_ms)
        if not self.predecessors.called:
            self._own.add(lease_id)
        try:
            grant = await self.store.take_lease(
                uid, lease_id, amount * self.messages, self.messages, least=amount,
                deadline_ms=deadline_ms, gateway=self.gateway)
        except StoreUnavailable as error:
            log.info("no credit lease for %s (%s): holding message by message", uid, error)
            grant = None
            self.metrics.lease_request("unavailable")
        finally:
            self._asking.pop(uid, None)
        now = self.clock.seconds()
        if grant is None or not grant.ok:
            if grant is not None:  # (one that failed may exist: its deadline ends it)
                self._own.discard(lease_id)
                self.metrics.lease_request("refused")
            self._quiet_until[uid] = now + self.retry
            return
        self.metrics.lease_request("granted")
        self._leases.setdefault(uid, []).append(Lease(
            grant.lease_id, uid, grant.credits, grant.messages, grant.credits, grant.messages,
            self.store.period_ids(now_ms), now + self.seconds, now, grant.epoch))

    def _retire(self, lease: Lease) -> None:
        """Hold nothing more on ``lease``; its marker follows what is still on its way."""
        left = [held for held in self._leases.get(lease.uid, ()) if held is not lease]
        if left:
            self._leases[lease.uid] = left
        else:
            self._leases.pop(lease.uid, None)
        self.clock.callLater(self.end_delay, self._publish_end, lease.uid, lease.id)

    def _publish_end(self, uid: str, lease_id: str) -> None:
        # (a lease of ours stays in _own: still open in Redis until its marker is settled, it
        # is not an earlier run's, whose markers _end_predecessors publishes)
        try:
            published = self.publish_end(uid, lease_id)
        except Exception as error:  # noqa: BLE001 - retried, and the sweeper's deadline
            published = fail(error)
        if isinstance(published, Deferred):
            published.addErrback(self._unpublished_end, uid, lease_id)

    def _unpublished_end(self, failure: Any, uid: str, lease_id: str) -> None:
        """Keep a marker the broker did not take for the next ticks (a repeat of one that
        did go out is harmless: ``lease_end`` answers "ended already")."""
        if len(self._unpublished) >= MAX_UNPUBLISHED:
            log.warning("could not publish the end of lease %s of %s (%s): too many waiting, "
                        "the sweeper ends it at its deadline", lease_id, uid,
                        failure.getErrorMessage())
            return
        if not self._unpublished:  # (once per outage, not once per lease)
            log.warning("could not publish the end of lease %s of %s (%s): retried once the "
                        "broker is back", lease_id, uid, failure.getErrorMessage())
        self._unpublished.append((uid, lease_id))

    def _retry_unpublished(self) -> None:
        if not self._unpublished or not self.ready():
            return
        waiting, self._unpublished = self._unpublished, []
        log.info("publishing %d credit lease end markers the broker did not take before",
                 len(waiting))
        for uid, lease_id in waiting:
            self._publish_end(uid, lease_id)

    def tick(self) -> None:
        """End leases that ran their time or sat idle, those an operator cut, and those an
        earlier run of this gateway left; forget old back-offs."""
        now = self.clock.seconds()
        for lease in self.open():
            if lease.until <= now or now - lease.used_at >= self.idle:
                self._retire(lease)
        self._quiet_until = {u: t for u, t in self._quiet_until.items() if t > now}
        self._retry_unpublished()
        if self._leases and not self._checking:
            Deferred.fromCoroutine(self.check_epochs()).addErrback(
                lambda f: log.error("checking credit leases failed: %s", f.getTraceback()))
        if self.name is not None and not self._keeping:
            Deferred.fromCoroutine(self.keep_name()).addErrback(
                lambda f: log.error("keeping the gateway name failed: %s", f.getTraceback()))

    def end_wallet(self, uid: str) -> Deferred:
        """End every lease of ``uid`` now: an operator cut its wallet through this gateway
        (jCli), so this gateway holds nothing more on them from the answer on; other
        gateways hear the cut announced (:class:`~jasmin_credits.services.ReloadChannelListener`)
        and see the raised epoch at their next check (:meth:`check_epochs`) at the latest.

        Fires once Redis gave back what those leases did not hold (:meth:`_cut`), and what
        earlier cuts of ``uid`` still being given back (the announcement may arrive before
        jCli's own answer): jCli answers after it, so the next message is judged on real
        usage. Never fails (a Redis failure leaves it to the end marker)."""
        for lease in list(self._leases.get(uid, ())):
            self._cut(lease)
        return DeferredList(list(self._shrinking.get(uid, ())))

    def _cut(self, lease: Lease) -> None:
        """Retire ``lease`` (an operator's cut) and shrink it in Redis to what this gateway
        held on it (``store.shrink_lease``): the rest goes back to the wallet now, instead of
        counting against its limits until the end marker is settled, a second later. The
        figures are taken here, once the lease holds nothing more."""
        log.info("credit lease %s of %s ends: its wallet changed", lease.id, lease.uid)
        self._retire(lease)
        shrinking = Deferred.fromCoroutine(self._shrink(
            lease.uid, lease.id, lease.credits - lease.left,
            lease.messages - lease.messages_left))
        if shrinking.called:
            return
        pending = self._shrinking.setdefault(lease.uid, set())
        pending.add(shrinking)

        def done(result: Any) -> Any:
            pending.discard(shrinking)
            if not pending and self._shrinking.get(lease.uid) is pending:
                del self._shrinking[lease.uid]
            return result

        shrinking.addBoth(done)

    async def _shrink(self, uid: str, lease_id: str, credits: int, messages: int) -> None:
        try:
            await self.store.shrink_lease(uid, lease_id, credits, messages)
        except StoreUnavailable as error:
            log.info("credit lease %s of %s not shrunk (%s): its end marker gives its unused "
                     "credit back", lease_id, uid, error)
        except Exception:
            log.exception("shrinking credit lease %s of %s failed", lease_id, uid)

    async def check_epochs(self) -> None:
        """End the leases of wallets an operator changed since they were granted: a
        subtraction, new limits or settings, a removal attempt (their scripts raise the
        wallet's ``lease_epoch``). Without this, a customer debited to nothing could go on
        sending against a lease for up to ``seconds``; with it, for about one tick. Redis
        unavailable: the next tick asks again."""
        if self._checking:
            return
        self._checking = True
        try:
            epochs = await self.store.lease_epochs(sorted(self._leases))
        except StoreUnavailable as error:
            log.info("cannot check credit leases against their wallets (%s)", error)
            return
        finally:
            self._checking = False
        for lease in self.open():
            epoch = epochs.get(lease.uid)
            # (epochs only grow: a lease granted after the read carries a newer one)
            if epoch is not None and (epoch < 0 or epoch > lease.epoch):
                self._cut(lease)

    async def keep_name(self) -> None:
        """Claim or renew this gateway's name (every tick); once it is held and markers can
        be published, end the leases an earlier run left. Without the name, hold nothing
        on leases: the process that holds it may end them."""
        if self.name is None or self._keeping:
            return
        self._keeping = True
        try:
            if not await self.name.keep():
                for lease in self.open():
                    self._retire(lease)
            elif not self.predecessors.called and self.ready():
                await self._end_predecessors()
        finally:
            self._keeping = False

    async def _end_predecessors(self) -> None:
        """Publish the end markers of the leases an earlier run of this gateway left open
        (it died before it could): they follow what that run queued, as its own would have.
        On a Redis failure, the next tick tries again."""
        try:
            left = await self.store.gateway_leases(self.gateway)  # type: ignore[arg-type]
        except StoreUnavailable as error:
            log.info("cannot read the credit leases a previous run left (%s): retrying", error)
            return
        ended = [(uid, lease_id) for uid, lease_id in left if lease_id not in self._own]
        for uid, lease_id in ended:
            self._publish_end(uid, lease_id)
        if ended:
            log.warning("gateway %s stopped uncleanly with %d credit leases open: their "
                        "end markers are published", self.gateway, len(ended))
        self._own.clear()
        self.predecessors.callback(len(ended))

    def open(self) -> list[Lease]:
        """The leases holding messages now, and the next ones."""
        return [lease for leases in self._leases.values() for lease in leases]

    def markers_waiting(self) -> int:
        """End markers the broker did not take, waiting to be published again."""
        return len(self._unpublished)

    # -- life cycle --------------------------------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        """Tick every ``interval`` seconds, the first time now (it claims the name)."""
        self._loop.start(interval, now=True)

    def stop(self) -> Deferred:
        """Hold nothing more; ``stop_delay`` later, end every lease, then give the gateway
        name up."""
        if self._loop.running:
            self._loop.stop()
        ending = self.open()
        self._leases.clear()
        return Deferred.fromCoroutine(self._stop(ending))

    async def _stop(self, ending: list[Lease]) -> None:
        if ending and self.stop_delay:
            await deferLater(self.clock, self.stop_delay, lambda: None)
        for lease in ending:
            self._publish_end(lease.uid, lease.id)
        if self.name is not None:
            await self.name.release()


def default_gateway_name(lock_file: str | None) -> str:
    """``<host name>:<lock file>``, the name of a gateway's leases when the config gives none:
    the same launcher started again on the same host finds its leases under it, and two
    launchers on one host differ (they cannot share a lock file)."""
    name = f"{socket.gethostname() or 'localhost'}:{lock_file or '-'}"
    return "".join("_" if c.isspace() or not c.isprintable() else c for c in name)[:200]


__all__ = ["Lease", "LeaseBook", "default_gateway_name"]
