"""One running gateway per credit-lease name.

Each gateway's open credit leases are listed in Redis under its name
(``charging.lease.gateway``, by default the host name and the launcher's lock file), so
that the gateway, started again after dying, ends the leases its previous run left
(:mod:`jasmin_credits.leasing`). Two gateways running under one name would end each
other's live leases: the messages still held against them in the other's memory would then
be charged from the wallet itself, even below zero. Two containers sharing the host's
network and name, with the default lock file, would do exactly that.

So a gateway claims its name in Redis before it takes a lease, and keeps the claim alive
(``lua/gateway_name.lua``: a key holding its instance id, with a time to live, renewed at
every tick of the lease book). A claim left by a dead run expires after ``ttl`` seconds;
the restarted gateway then takes the name over. A claim that another process keeps renewing
for longer than that is a second running gateway: this one logs an error naming the
setting and holds message by message (no leases) for as long as the other runs.
"""

from __future__ import annotations

import logging
import uuid

from twisted.internet.interfaces import IReactorTime

from .errors import StoreUnavailable
from .store import CreditStore

log = logging.getLogger("jasmin-credits")


class GatewayName:
    """This process's claim on the gateway name ``name`` (see the module's docstring)."""

    def __init__(self, store: CreditStore, name: str, clock: IReactorTime,
                 ttl: float = 10.0):
        self.store = store
        self.name = name
        self.clock = clock
        self.ttl = ttl
        self.instance = uuid.uuid4().hex
        self.held = False
        """Whether this process holds the name (as of the last :meth:`keep`)."""
        self._refused_since: float | None = None
        self._said_taken = False

    async def keep(self) -> bool:
        """Claim the name, or renew the claim; answers :attr:`held`. Redis unavailable
        changes nothing (the claim outlives a short outage, and nobody else can take it
        meanwhile)."""
        try:
            holder = await self.store.claim_gateway(self.name, self.instance,
                                                    int(self.ttl * 1000))
        except StoreUnavailable as error:
            log.info("cannot renew the claim on gateway name %s (%s)", self.name, error)
            return self.held
        now = self.clock.seconds()
        if holder is None:
            if self._said_taken:
                log.warning("gateway name %s is free again: credit leases resume", self.name)
            self.held, self._refused_since, self._said_taken = True, None, False
            return True
        if self.held:
            # This process stalled past its claim's life and another took the name.
            log.error("gateway name %s was taken over by another process (%s) while this "
                      "one stalled: its credit leases end here", self.name, holder)
            self.held = False
        if self._refused_since is None:
            self._refused_since = now
        elif now - self._refused_since >= self.ttl and not self._said_taken:
            # A dead run's claim would have expired by now: someone keeps renewing it.
            log.error("gateway name %s is in use by another running gateway (%s): credit "
                      "leases are off here until it stops; give each gateway its own "
                      "charging.lease.gateway", self.name, holder)
            self._said_taken = True
        return False

    async def release(self) -> None:
        """Give the name up (a clean stop), if this process holds it."""
        if not self.held:
            return
        self.held = False
        try:
            await self.store.claim_gateway(self.name, self.instance, 0)
        except StoreUnavailable as error:
            log.info("cannot give up gateway name %s (%s): it expires in %ss", self.name,
                     error, self.ttl)


__all__ = ["GatewayName"]
