"""Every Redis key jasmin-credits uses, named in one place.

All keys of one user share the hash tag ``{u:<uid>}``, so one user's keys land on one
cluster slot and a Lua script that touches only one user's keys stays slot-local. A few
small index keys are global (the set of wallets, users with open reservations, the
message-id links written by settlement): jasmin-credits needs a single Redis server or a
primary with replicas, like Jasmin itself, not a Redis Cluster.

Jasmin stores ``dlr:*``, ``queue-msgid:*`` and ``longDeliverSm:*`` in db 0; every key here
starts with the configured prefix (default ``jc``), so the two never collide.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_UID = re.compile(r"^[^\s{}:]{1,64}$")


def check_uid(uid: str) -> str:
    """Return ``uid`` if it can name a wallet, else raise ValueError.

    Jasmin uids are short words; braces, colons and spaces would break the key scheme.
    """
    if not isinstance(uid, str) or not _UID.match(uid):
        raise ValueError(f"invalid user id {uid!r}: 1-64 characters, no spaces, braces or colons")
    return uid


class UserKeys(NamedTuple):
    """The keys of one user that every charging operation names (see :meth:`Keys.of`)."""

    wallet: str
    events: str
    log: str
    open: str
    reservation_prefix: str
    concat_prefix: str

    def reservation(self, ref: str) -> str:
        return self.reservation_prefix + ref

    def concat(self, concat_id: str) -> str:
        return self.concat_prefix + concat_id


# Users whose key bundles Keys.of keeps; beyond that the cache starts again (gateways
# serve far fewer active users; the bound only keeps a key scan from growing memory).
_USER_CACHE_SIZE = 50_000


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str = "jc"):
        if not prefix or any(c in prefix for c in " {}"):
            raise ValueError(f"invalid key prefix {prefix!r}")
        self.prefix = prefix
        self.wallets = f"{prefix}:wallets"
        """Set of uids that have a wallet."""
        self.open_users = f"{prefix}:open-users"
        """Set of uids with at least one unsettled reservation (the sweeper's work list)."""
        self.assignments = f"{prefix}:card-assignments"
        """Hash ``u:<uid>`` / ``g:<gid>`` -> rate card name, set from jCli."""
        self.reload_channel = f"{prefix}:reload"
        """Pub/sub channel telling every gateway to re-read rate cards (``cards <sender>``,
        ``assignments <sender>``) or to end its credit leases on a wallet an operator cut
        (``cut <uid>``, published by the scripts that raise the wallet's lease epoch)."""
        self.outbox = f"{prefix}:outbox"
        """Stream of every user's events, read by the event publisher (AMQP, webhooks)."""
        self.leases = f"{prefix}:leases"
        """Sorted set of open credit leases, ``"<uid> <lease id>"`` by deadline (ms)."""
        self._users: dict[str, UserKeys] = {}

    def lua_constants(self) -> dict[str, str]:
        """The key names as Lua constants, for scripts that find a user from a message link
        (``USER_HEAD .. uid .. USER_TAIL .. WALLET_SUFFIX`` is :meth:`wallet`, and so on)."""
        marker = "\x00"
        head, tail = self.user(marker).split(marker)
        user = self.user(marker)

        def suffix(key: str) -> str:
            return key[len(user):].replace(marker, "")

        return {
            "USER_HEAD": head, "USER_TAIL": tail,
            "WALLET_SUFFIX": suffix(self.wallet(marker)),
            "RESERVATION_SUFFIX": suffix(self.reservation(marker, "")),
            "LOG_SUFFIX": suffix(self.log(marker)),
            "EVENTS_SUFFIX": suffix(self.events(marker)),
            "OPEN_SUFFIX": suffix(self.open(marker)),
            "MESSAGE_HEAD": self.message(""),
        }

    def of(self, uid: str) -> UserKeys:
        """The per-message keys of ``uid``, built once (charging names them per message)."""
        found = self._users.get(uid)
        if found is None:
            if len(self._users) >= _USER_CACHE_SIZE:
                self._users.clear()
            found = self._users[uid] = UserKeys(
                self.wallet(uid), self.events(uid), self.log(uid),
                self.open(uid), self.reservation(uid, ""), self.concat(uid, ""))
        return found

    def user(self, uid: str) -> str:
        """The common start of every key of ``uid``."""
        return f"{self.prefix}:{{u:{uid}}}"

    def wallet(self, uid: str) -> str:
        return f"{self.user(uid)}:wallet"

    def log(self, uid: str) -> str:
        """Stream: the credit log (every balance change)."""
        return f"{self.user(uid)}:log"

    def events(self, uid: str) -> str:
        """Stream: the events log (top-ups, limits, low balance, refunds, plan runs)."""
        return f"{self.user(uid)}:events"

    def reservation(self, uid: str, ref: str) -> str:
        return f"{self.user(uid)}:res:{ref}"

    def open(self, uid: str) -> str:
        """Sorted set of this user's unsettled reservation refs, scored by creation ms."""
        return f"{self.user(uid)}:open"

    def op(self, uid: str, op_id: str) -> str:
        """Idempotency record of one top-up or adjustment."""
        return f"{self.user(uid)}:op:{op_id}"

    def concat(self, uid: str, concat_id: str) -> str:
        """Pointer from a concatenated SMPP message to the reservation of all its parts."""
        return f"{self.user(uid)}:cc:{concat_id}"

    def plan(self, uid: str) -> str:
        """Hash: the wallet's automatic top-up plan."""
        return f"{self.user(uid)}:plan"

    def lease(self, uid: str, lease_id: str) -> str:
        """One credit lease of a gateway (jasmin_credits.leasing)."""
        return f"{self.user(uid)}:lease:{lease_id}"

    def gateway_leases(self, gateway: str) -> str:
        """Set of the open credit leases one gateway took, ``"<uid> <lease id>"``: its
        successor (the same gateway restarted) ends them at start."""
        return f"{self.prefix}:gateway:{gateway}:leases"

    def gateway_claim(self, gateway: str) -> str:
        """The instance id of the running process that holds the gateway name ``gateway``
        (expires unless kept: see ``lua/gateway_name.lua``)."""
        return f"{self.prefix}:gateway:{gateway}:claim"

    def message(self, msgid: str) -> str:
        """Link from a Jasmin message id to ``uid ref parts`` (written at queueing)."""
        return f"{self.prefix}:msg:{msgid}"
