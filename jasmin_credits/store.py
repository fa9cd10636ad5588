"""Wallets, reservations, the credit log and the events log, in Redis.

Every change of money is one Lua script call (``jasmin_credits/lua``), atomic on the
server and idempotent on its id:

- ``reserve`` holds credits for a message (idempotent on the reservation ref). The
  balance does not move yet: ``available = balance - reserved (+ overdraft)`` does.
- ``link`` records that Jasmin queued parts of it under a message id.
- ``commit`` charges what left (balance falls, a ``charge`` entry with the message id is
  logged); ``refund`` gives back held or charged credits (a ``refund`` entry when money
  had been charged); ``release``/``expire`` are the sweeper's timeouts.
- ``top_up`` adds or subtracts credits by hand or by plan (idempotent on its op id).

So the credit log holds exactly the changes of the balance and always sums to it, and a
message that never left is never charged. Period usage (limits) counts at reservation and
is given back by refunds.

Time comes from the injected ``clock`` (``seconds()``); every call to Redis has a timeout
(``call_timeout``) and fails with :class:`StoreUnavailable`.
"""

from __future__ import annotations

import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime

from .errors import Refusal, StoreUnavailable, UnknownWallet
from .keys import Keys, check_uid
from .periods import Period, periods_at
from .scripts import RedisClient, Scripts

DAY_MS = 86_400_000

# Wallet hash fields a caller may set through configure().
LIMIT_FIELDS = {
    (kind, period): f"lim:{kind}:{period}"
    for kind in ("credits", "msgs")
    for period in ("day", "week", "month")
}
SETTING_FIELDS = frozenset({"overdraft", "low_balance", *LIMIT_FIELDS.values()})

# Script status codes that are not refusals.
OK, NO_WALLET, CONCAT_ELSEWHERE, CONCAT_PART_SEEN = 0, 8, 20, 21
UNKNOWN_RESERVATION, WALLET_REMOVED, RESERVATIONS_OPEN = 30, 31, 40


@dataclass(frozen=True)
class StoreSettings:
    """Retention and timing of the store; see the configuration reference."""

    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    call_timeout: float = 2.0
    log_retention: timedelta = timedelta(days=400)
    events_retention: timedelta = timedelta(days=90)
    op_ttl: timedelta = timedelta(days=35)
    reservation_ttl: timedelta = timedelta(days=8)
    message_link_ttl: timedelta = timedelta(days=8)
    pending_outcome_ttl: timedelta = timedelta(hours=6)
    concat_ttl: timedelta = timedelta(hours=1)
    batch: bool = True
    """Send operations of one reactor turn to Redis as one call (see scripts.Scripts)."""
    decimals: int = 4
    """``money.decimals``: units per credit, for amounts scripts write as text (plan runs'
    reasons); every stored amount field stays an integer of units."""
    display_decimals: int | None = 2
    """``money.display_decimals``: how such text shows them (``money.format_amount``)."""


@dataclass(frozen=True)
class Concat:
    """A part of a concatenated SMPP message: all parts share one reservation."""

    key: str
    """Identifies the message: source, destination, reference and part count."""
    seq: int
    total: int


@dataclass(frozen=True)
class Hold:
    """The answer to :meth:`CreditStore.reserve`."""

    refusal: Refusal | None
    ref: str
    amount: int
    balance: int
    reserved: int
    overdraft: int
    no_wallet: bool = False

    @property
    def ok(self) -> bool:
        return self.refusal is None and not self.no_wallet


@dataclass(frozen=True)
class Grant:
    """The answer to :meth:`CreditStore.take_lease`: what the lease holds (0, 0: none)."""

    lease_id: str
    credits: int
    messages: int
    epoch: int = 0
    """The wallet's lease epoch when granted: the lease ends once it changes
    (:meth:`CreditStore.lease_epochs`)."""

    @property
    def ok(self) -> bool:
        return self.messages > 0


@dataclass(frozen=True)
class Settled:
    """The answer to a settlement operation."""

    found: bool
    changed: int
    """Balance change made by this call (negative: charged)."""
    balance: int
    reserved: int
    open_parts: int


@dataclass(frozen=True)
class Usage:
    """Credits and messages used in one period, with its limits."""

    period: Period
    credits: int
    msgs: int
    credit_limit: int | None
    msg_limit: int | None


@dataclass(frozen=True)
class Wallet:
    """One user's wallet as read at one moment."""

    uid: str
    balance: int
    reserved: int
    overdraft: int
    low_balance: int | None
    usage: tuple[Usage, Usage, Usage]
    created_ms: int
    leased: int = 0
    """The part of ``reserved`` that gateways' credit leases hold and have not used yet."""

    @property
    def available(self) -> int:
        """What can still be reserved: balance minus held credits plus overdraft."""
        return self.balance - self.reserved + self.overdraft


@dataclass(frozen=True)
class LogEntry:
    """One entry of the credit log or the events log (``fields`` holds the rest)."""

    id: str
    ts_ms: int
    type: str
    fields: dict[str, str]

    def int_field(self, name: str) -> int:
        value = self.fields.get(name, "")
        return int(value) if value.lstrip("-").isdigit() else 0


def new_ref(now_ms: int) -> str:
    """A reservation ref: creation time (so its periods are derivable) and 48 random bits."""
    return f"{now_ms}-{secrets.token_hex(6)}"


def _lease_members(members: Any) -> list[tuple[str, str]]:
    """``(uid, lease id)`` pairs of ``"<uid> <lease id>"`` set members."""
    found = []
    for member in members or ():
        uid, _, lease_id = str(member).partition(" ")
        found.append((uid, lease_id))
    return found


def quote_record(country: str, destination: str, prefix: str, card: str) -> str:
    """What priced a hold, as its reservation keeps it for the credit log."""
    return f"{country}|{destination}|{prefix}|{card}"


def created_ms(ref: str) -> int:
    """The creation time encoded in a reservation ref."""
    head, _, _ = ref.partition("-")
    if not head.isdigit():
        raise ValueError(f"not a reservation ref: {ref!r}")
    return int(head)


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _script_constants(settings: StoreSettings, keys: Keys) -> dict[str, int | str]:
    """The settings and global keys the hot-path scripts read as Lua constants."""
    return {
        **keys.lua_constants(),
        "OPEN_USERS": keys.open_users,
        "OUTBOX": keys.outbox,
        "RELOAD_CHANNEL": keys.reload_channel,
        "LEASES": keys.leases,
        "RESERVATION_TTL": _ms(settings.reservation_ttl),
        "CONCAT_TTL": _ms(settings.concat_ttl),
        "EVENTS_RETENTION": _ms(settings.events_retention),
        "LOG_RETENTION": _ms(settings.log_retention),
        "LINK_TTL": _ms(settings.message_link_ttl),
        "PENDING_OUTCOME_TTL": _ms(settings.pending_outcome_ttl),
        "MONEY_DECIMALS": settings.decimals,
        "MONEY_SHOWN": (settings.decimals if settings.display_decimals is None
                        else min(settings.display_decimals, settings.decimals)),
    }


class CreditStore:
    """The credit engine's Redis side. All public methods are coroutines."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        clock: IReactorTime,
        reactor: IReactorTime,
        keys: Keys | None = None,
        settings: StoreSettings | None = None,
    ):
        self.redis = redis
        self.clock = clock
        self.reactor = reactor
        self.keys = keys or Keys()
        self.settings = settings or StoreSettings()
        self.scripts = Scripts(redis, reactor, self.settings.call_timeout, self.settings.batch,
                               constants=_script_constants(self.settings, self.keys))
        self._period_cache: tuple[int, int, tuple[Period, ...], list[str]] | None = None

    # -- plumbing ---------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    async def _call(self, deferred: Deferred) -> Any:
        """Await a Redis call (already bounded by a timeout); map failures."""
        try:
            return await deferred
        except TimeoutError:
            raise StoreUnavailable(
                f"Redis did not answer within {self.settings.call_timeout}s"
            ) from None
        except ConnectionError as error:
            raise StoreUnavailable(f"Redis connection failed: {error}") from None
        except Exception as error:
            if type(error).__name__ in ("ConnectionError", "RedisError", "ResponseError"):
                # txredisapi's own ConnectionError is not the builtin one
                raise StoreUnavailable(f"Redis error: {error}") from None
            raise

    def _run(self, name: str, keys: list[str], args: list[Any],
             lazy: bool = False) -> Coroutine[Any, Any, Any]:
        """Run one Lua operation (a plain function returning the awaitable: one coroutine
        frame less on the per-message path); ``lazy``: see :class:`~.scripts.Scripts`."""
        return self._call(self.scripts.run(name, keys, args, lazy))

    async def _command(self, *args: Any) -> Any:
        call = self.redis.execute_command(*args)
        return await self._call(call.addTimeout(self.settings.call_timeout, self.reactor))

    def _periods(self, at_ms: int) -> tuple[Period, ...]:
        return self._period_entry(at_ms)[2]

    def period_ids(self, at_ms: int) -> list[str]:
        """Day, week and month ids at ``at_ms`` (the usage periods a reservation counts in)."""
        return self._period_entry(at_ms)[3]

    def _period_entry(self, at_ms: int) -> tuple[int, int, tuple[Period, ...], list[str]]:
        # The day, week and month are the same for a whole day: compute them once a day.
        cached = self._period_cache
        if cached is not None and cached[0] <= at_ms < cached[1]:
            return cached
        periods = periods_at(at_ms / 1000, self.settings.timezone)
        day = periods[0]
        entry = (
            int(day.start.timestamp() * 1000),
            int(day.end.timestamp() * 1000),
            periods,
            [p.id for p in periods],
        )
        if cached is None or entry[0] >= cached[0]:
            self._period_cache = entry  # keep the newest day (old refs settle rarely)
        return entry

    # -- reserving ----------------------------------------------------------------------

    async def reserve(
        self,
        uid: str,
        unit_price: int,
        parts: int,
        *,
        messages: int = 1,
        concat: Concat | None = None,
        ref: str | None = None,
        country: str = "",
        destination: str = "",
        prefix: str = "",
        card: str = "",
    ) -> Hold:
        """Hold ``unit_price * parts`` credits of ``uid`` for one message.

        Answers a :class:`Hold`: ``ok``, ``no_wallet``, or the ``refusal`` (insufficient
        credit, or which limit). Repeating it with the same ``ref`` holds nothing more.
        For a part of a concatenated message (``concat``), the first part to arrive holds
        all ``concat.total`` parts and the others claim that one reservation.
        """
        check_uid(uid)
        if unit_price < 0 or parts < 1:
            raise ValueError("unit price must be >= 0 and parts >= 1")
        now = self.now_ms()
        ref = ref or new_ref(now)
        if concat:
            parts = max(concat.total, 1)
        user = self.keys.of(uid)
        quote = quote_record(country, destination, prefix, card)
        for _ in range(3):
            keys = [
                user.wallet,
                user.reservation(ref),
                user.events,
                user.open,
                user.concat(concat.key if concat else "-"),
            ]
            args = [
                uid,
                ref,
                unit_price,
                parts,
                messages,
                now,
                *self.period_ids(created_ms(ref)),
                "c" if concat else "",
                concat.seq if concat else 0,
                quote,
            ]
            status, got_ref, amount, balance, reserved, overdraft = await self._run(
                "reserve", keys, args
            )
            if status == CONCAT_ELSEWHERE:
                ref = got_ref
                continue
            if status == CONCAT_PART_SEEN:
                # The same part number again: the client sends a new message that reuses
                # the reference. It starts a reservation of its own.
                ref = new_ref(now)
                concat = Concat(f"{concat.key}:{ref}", concat.seq, concat.total)
                continue
            refusal = None if status in (OK, NO_WALLET) else Refusal(status)
            return Hold(
                refusal,
                got_ref,
                amount,
                balance,
                reserved,
                overdraft,
                no_wallet=status == NO_WALLET,
            )
        raise StoreUnavailable("concatenated message reservation kept moving; retry")

    # -- settling -----------------------------------------------------------------------

    async def _settle(
        self,
        uid: str,
        ref: str,
        action: str,
        *,
        msgid: str = "",
        parts: int = 0,
        reason: str = "",
        actor: str = "",
        lazy: bool = False,
    ) -> Settled:
        user = self.keys.of(uid)
        keys = [
            user.wallet,
            user.reservation(ref),
            user.log,
            user.events,
            user.open,
            self.keys.message(msgid or "-"),
        ]
        args = [uid, ref, action, msgid, parts, reason, actor, self.now_ms(),
                *self.period_ids(created_ms(ref))]
        status, changed, balance, reserved, open_parts = await self._run("settle", keys, args,
                                                                        lazy)
        return Settled(status == OK, changed, balance, reserved, open_parts)

    # -- credit leases (jasmin_credits.leasing) ------------------------------------------

    async def take_lease(self, uid: str, lease_id: str, credits: int, messages: int, *,
                         least: int, deadline_ms: int, gateway: str | None = None) -> Grant:
        """Carve up to ``credits`` and ``messages`` (room under the message limits) out of
        the wallet of ``uid`` as lease ``lease_id`` (idempotent on it), or nothing when
        less than ``least`` credits or no message fits. The sweeper ends it at
        ``deadline_ms`` if nobody did before; ``gateway`` names the gateway taking it, in
        whose set (:meth:`gateway_leases`) it stays until it ends."""
        check_uid(uid)
        now = self.now_ms()
        keys = [self.keys.wallet(uid), self.keys.lease(uid, lease_id)]
        if gateway is not None:
            keys.append(self.keys.gateway_leases(gateway))
        status, got, msgs, epoch = await self._run(
            "lease_take", keys,
            [uid, lease_id, int(credits), int(messages), int(least), now,
             *self.period_ids(now), int(deadline_ms)])
        if status != OK:
            return Grant(lease_id, 0, 0)  # no room, or no wallet
        return Grant(lease_id, got, msgs, epoch)

    async def lease_epochs(self, uids: list[str]) -> dict[str, int]:
        """The lease epoch of each wallet of ``uids`` (-1: no such wallet). An operator's
        subtraction, settings change or removal attempt raises it: leases granted under an
        older one must end (:class:`~jasmin_credits.leasing.LeaseBook` checks every second)."""
        if not uids:
            return {}
        for uid in uids:
            check_uid(uid)
        _, *epochs = await self._run("lease_epochs", [self.keys.wallet(uid) for uid in uids],
                                     [])
        return dict(zip(uids, (int(e) for e in epochs), strict=True))

    def _leased_hold(self, uid: str, ref: str, lease_id: str, unit_price: int, parts: int,
                     messages: int, quote: str) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``lease_hold.lua`` (``lease_link.lua`` takes them first)."""
        user = self.keys.of(uid)
        return ([user.wallet, user.reservation(ref), self.keys.lease(uid, lease_id), user.open,
                 user.events],
                [uid, ref, unit_price, parts, messages, self.now_ms(),
                 *self.period_ids(created_ms(ref)), quote])

    def hold_leased(self, uid: str, ref: str, lease_id: str, unit_price: int, parts: int,
                    messages: int, quote: str, *,
                    lazy: bool = False) -> Coroutine[Any, Any, Any]:
        """Write the reservation ``ref`` a gateway held against lease ``lease_id`` (from the
        lease, or from the wallet if the lease ended first), without linking it: settlement
        uses :meth:`link_leased`; this is the hold alone, as a version before it could leave
        one. Idempotent on ``ref``."""
        return self._run("lease_hold", *self._leased_hold(uid, ref, lease_id, unit_price,
                                                          parts, messages, quote), lazy)

    async def link_leased(self, uid: str, ref: str, msgid: str, lease_id: str,
                          unit_price: int, parts: int, messages: int, quote: str, *,
                          lazy: bool = False) -> Settled:
        """:meth:`hold_leased` and :meth:`link` to ``msgid`` in one atomic call: settlement's
        calls travel on several connections, so two calls could run in either order, and a
        link before its hold links nothing. Idempotent on ``ref`` and ``msgid``."""
        keys, args = self._leased_hold(uid, ref, lease_id, unit_price, parts, messages, quote)
        status, changed, balance, reserved, open_parts = await self._run(
            "lease_link", [*keys, self.keys.log(uid), self.keys.message(msgid)],
            [*args, msgid], lazy)
        return Settled(status == OK, changed, balance, reserved, open_parts)

    async def end_lease(self, uid: str, lease_id: str, *, lazy: bool = False) -> int | None:
        """Give back what lease ``lease_id`` did not hold; answers that amount, or None if
        the lease was ended already (or its wallet removed)."""
        check_uid(uid)
        status, left = await self._run(
            "lease_end",
            [self.keys.wallet(uid), self.keys.lease(uid, lease_id), self.keys.events(uid)],
            [uid, lease_id, self.now_ms()], lazy)
        return left if status == OK else None

    async def shrink_lease(self, uid: str, lease_id: str, credits: int,
                           messages: int) -> tuple[int, int] | None:
        """Cut lease ``lease_id`` down to the ``credits`` and ``messages`` its gateway held
        on it (an operator's cut ended it in the gateway's memory), giving the rest back to
        the wallet now rather than at its end marker, a second later: until then the unused
        part would count against the wallet's limits. Answers ``(credits, messages)`` given
        back (0, 0 for a repeat), or None if the lease was ended already (or its wallet
        removed). Idempotent; the messages still on their way are then held from what the
        lease kept (``lua/lease_shrink.lua``)."""
        check_uid(uid)
        status, given, given_msgs = await self._run(
            "lease_shrink",
            [self.keys.wallet(uid), self.keys.lease(uid, lease_id), self.keys.events(uid)],
            [uid, lease_id, int(credits), int(messages), self.now_ms()])
        return (given, given_msgs) if status == OK else None

    async def expired_leases(self, before_ms: int, limit: int = 500) -> list[tuple[str, str]]:
        """``(uid, lease id)`` of leases whose deadline is before ``before_ms``."""
        return _lease_members(await self._command(
            "ZRANGEBYSCORE", self.keys.leases, "-inf", f"({int(before_ms)}", "LIMIT", 0,
            int(limit)))

    async def claim_gateway(self, gateway: str, instance: str, ttl_ms: int) -> str | None:
        """Claim (or keep) the gateway name ``gateway`` for process ``instance`` for
        ``ttl_ms``; ``ttl_ms`` 0 gives it up. Answers None when this process holds it (or
        gave it up), else the instance id of the running process that holds it."""
        status, holder = await self._run("gateway_name", [self.keys.gateway_claim(gateway)],
                                         [instance, int(ttl_ms)])
        return None if status == OK else str(holder)

    async def gateway_leases(self, gateway: str) -> list[tuple[str, str]]:
        """``(uid, lease id)`` of the open leases gateway ``gateway`` took."""
        return sorted(_lease_members(await self._command(
            "SMEMBERS", self.keys.gateway_leases(gateway))))

    def link(self, uid: str, ref: str, msgid: str, parts: int, *,
             lazy: bool = False) -> Coroutine[Any, Any, Settled]:
        """Jasmin queued ``parts`` parts of reservation ``ref`` under message id ``msgid``.

        ``lazy`` (settlement's links: nobody waits on them) lets the call ride along with
        the next one to Redis (see :class:`~.scripts.Scripts`)."""
        if not msgid:
            raise ValueError("link needs a message id")
        return self._settle(uid, ref, "link", msgid=msgid, parts=parts, lazy=lazy)

    def commit(self, uid: str, ref: str, msgid: str = "") -> Coroutine[Any, Any, Settled]:
        """Charge the parts queued under ``msgid`` (or every held part): they left."""
        return self._settle(uid, ref, "commit", msgid=msgid)

    async def refund(
        self, uid: str, ref: str, reason: str, *, msgid: str = "", actor: str = "system"
    ) -> Settled:
        """Give back the parts of ``msgid`` (or all of ``ref``), held or already charged."""
        return await self._settle(uid, ref, "refund", msgid=msgid, reason=reason, actor=actor)

    async def release(self, uid: str, ref: str) -> Settled:
        """Give back the parts of ``ref`` that were never queued."""
        return await self._settle(uid, ref, "release")

    async def expire(self, uid: str, ref: str, unanswered: str) -> Settled:
        """Release unqueued parts and settle unanswered ones (``commit`` or ``refund``)."""
        if unanswered not in ("commit", "refund"):
            raise ValueError("unanswered must be 'commit' or 'refund'")
        return await self._settle(uid, ref, "expire", reason=unanswered)

    async def settle_message(self, msgid: str, sent: bool, reason: str = "", *,
                             lazy: bool = False) -> Settled | None:
        """Settle by Jasmin message id alone (a ``dlr.submit_sm_resp`` event), in one call.

        If the message is not linked yet, the outcome is kept and the link applies it.
        Answers None when the outcome was kept (or the message is not ours). ``lazy``: as
        for :meth:`link`.
        """
        outcome = "c" if sent else "r"
        reply = await self._run("outcome", [self.keys.message(msgid)],
                                [outcome, reason, self.now_ms()], lazy)
        if reply[0] == 2:  # settled in the same call
            status, changed, balance, reserved, open_parts = reply[1:]
            return Settled(status == OK, changed, balance, reserved, open_parts)
        if reply[0] == 0:
            return None
        uid, ref = reply[1].split(" ")[:2]  # a link from an older version: two steps
        if sent:
            return await self._settle(uid, ref, "commit", msgid=msgid, lazy=lazy)
        return await self._settle(uid, ref, "refund", msgid=msgid, reason=reason,
                                  actor="system", lazy=lazy)

    async def message_link(self, msgid: str) -> tuple[str, str] | None:
        """``(uid, ref)`` of a linked message id, or None."""
        value = await self._command("GET", self.keys.message(msgid))
        if not value or value.startswith("!"):
            return None
        uid, ref = value.split(" ")[:2]
        return uid, ref

    # -- wallets ------------------------------------------------------------------------

    async def top_up(
        self,
        uid: str,
        amount: int,
        *,
        op_id: str,
        actor: str,
        reason: str = "",
        kind: str = "topup",
        create: bool = True,
    ) -> tuple[int, bool]:
        """Add ``amount`` (negative subtracts) to the balance, once per ``op_id``.

        Answers ``(balance, repeated)``; ``repeated`` is True when ``op_id`` was already
        applied (nothing changed). Raises :class:`UnknownWallet` if there is no wallet and
        ``create`` is False.
        """
        check_uid(uid)
        if kind not in ("topup", "adjust", "plan"):
            raise ValueError(f"unknown top-up kind {kind!r}")
        now = self.now_ms()
        status, balance, repeated = await self._run(
            "topup",
            [
                self.keys.wallet(uid),
                self.keys.log(uid),
                self.keys.events(uid),
                self.keys.op(uid, op_id),
                self.keys.wallets,
                self.keys.outbox,
            ],
            [
                uid,
                int(amount),
                op_id,
                actor,
                reason,
                now,
                kind,
                _ms(self.settings.log_retention),
                _ms(self.settings.events_retention),
                _ms(self.settings.op_ttl),
                "1" if create else "0",
            ],
        )
        if status == NO_WALLET:
            raise UnknownWallet(f"user {uid} has no wallet")
        return balance, bool(repeated)

    async def configure(
        self, uid: str, settings: dict[str, int | None], *, create: bool = True
    ) -> None:
        """Set wallet fields (``overdraft``, ``low_balance``, ``lim:<credits|msgs>:<period>``).

        ``None`` clears a limit or threshold. One atomic call; an event records the change.
        """
        check_uid(uid)
        unknown = set(settings) - SETTING_FIELDS
        if unknown:
            raise ValueError(f"unknown wallet settings: {', '.join(sorted(unknown))}")
        pairs: list[str] = []
        for name, value in settings.items():
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None")
            if name == "overdraft" and value is None:
                value = 0
            pairs += [name, "" if value is None else str(value)]
        now = self.now_ms()
        (status,) = await self._run(
            "configure",
            [self.keys.wallet(uid), self.keys.events(uid), self.keys.wallets, self.keys.outbox],
            [uid, now, _ms(self.settings.events_retention), "1" if create else "0", *pairs],
        )
        if status == NO_WALLET:
            raise UnknownWallet(f"user {uid} has no wallet")

    async def remove(self, uid: str, actor: str, reason: str = "wallet removed") -> int:
        """Delete the wallet of ``uid`` (its logs stay). Answers the balance it had.

        The balance is written off in the same atomic step: a credit log entry of type
        ``removed`` (amount ``-balance``, balance 0, ``actor``, ``reason``), so the log
        keeps summing to the balance when a top-up creates the wallet again. Refused
        (ValueError) while messages are held or credit leases are open.
        """
        check_uid(uid)
        now = self.now_ms()
        status, balance = await self._run(
            "remove",
            [
                self.keys.wallet(uid),
                self.keys.events(uid),
                self.keys.wallets,
                self.keys.open(uid),
                self.keys.plan(uid),
                self.keys.log(uid),
                self.keys.outbox,
            ],
            [uid, now, _ms(self.settings.events_retention), actor,
             _ms(self.settings.log_retention), reason],
        )
        if status == NO_WALLET:
            raise UnknownWallet(f"user {uid} has no wallet")
        if status == RESERVATIONS_OPEN:
            raise ValueError(f"user {uid} has messages in flight or credit leases open (those "
                             "end within seconds); remove the wallet later")
        return balance

    async def wallet(self, uid: str) -> Wallet | None:
        """Read one wallet with its usage in the current periods, or None."""
        check_uid(uid)
        periods = self._periods(self.now_ms())
        raw = await self._command("HGETALL", self.keys.wallet(uid))
        if not raw:
            return None
        return _wallet(uid, raw, periods)

    async def wallets(self) -> list[str]:
        """Every uid with a wallet, sorted."""
        return sorted(await self._command("SMEMBERS", self.keys.wallets))

    async def open_reservations(self, uid: str, older_than_ms: int) -> list[str]:
        """Refs of ``uid`` still unsettled and created before ``older_than_ms``."""
        return await self._command(
            "ZRANGEBYSCORE", self.keys.open(uid), "-inf", f"({older_than_ms}"
        )

    async def users_with_open_reservations(self) -> list[str]:
        return sorted(await self._command("SMEMBERS", self.keys.open_users))

    async def reservation(self, uid: str, ref: str) -> dict[str, str]:
        """The raw reservation record (for display and tests)."""
        return _pairs(await self._command("HGETALL", self.keys.reservation(uid, ref)))

    # -- rate card assignments (set from jCli, shared by every gateway) -------------------

    async def card_assignments(self) -> dict[str, str]:
        """Card names by ``u:<uid>`` / ``g:<gid>``."""
        return _pairs(await self._command("HGETALL", self.keys.assignments))

    async def set_card_assignment(self, field: str, card: str | None) -> None:
        """Assign (or with None, unassign) a card to ``u:<uid>`` or ``g:<gid>``."""
        if card is None:
            await self._command("HDEL", self.keys.assignments, field)
        else:
            await self._command("HSET", self.keys.assignments, field, card)

    async def announce_reload(self, what: str) -> None:
        """Tell every gateway on this Redis to re-read its cards or assignments."""
        await self._command("PUBLISH", self.keys.reload_channel, what)

    # -- logs ---------------------------------------------------------------------------

    async def _read_stream(
        self,
        key: str,
        since_ms: int | None,
        until_ms: int | None,
        types: frozenset[str] | None,
        count: int,
        before: str | None,
    ) -> tuple[list[LogEntry], str | None]:
        end = f"({before}" if before else (str(until_ms) if until_ms is not None else "+")
        start = str(since_ms) if since_ms is not None else "-"
        entries: list[LogEntry] = []
        cursor = end
        while len(entries) < count:
            batch = await self._command(
                "XREVRANGE", key, cursor, start, "COUNT", max(count * 2, 50)
            )
            if not batch:
                return entries, None
            for entry_id, flat in batch:
                entry = _entry(entry_id, flat)
                if types is None or entry.type in types:
                    entries.append(entry)
                    if len(entries) == count:
                        return entries, entry_id
            cursor = f"({batch[-1][0]}"
        return entries, None

    async def log(
        self,
        uid: str,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        types: frozenset[str] | None = None,
        count: int = 50,
        before: str | None = None,
    ) -> tuple[list[LogEntry], str | None]:
        """Credit log of ``uid``, newest first: ``(entries, cursor for the next page)``."""
        return await self._read_stream(self.keys.log(uid), since_ms, until_ms, types, count, before)

    async def events(
        self,
        uid: str,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        types: frozenset[str] | None = None,
        count: int = 50,
        before: str | None = None,
    ) -> tuple[list[LogEntry], str | None]:
        """Events log of ``uid``, newest first: ``(entries, cursor for the next page)``."""
        return await self._read_stream(
            self.keys.events(uid), since_ms, until_ms, types, count, before
        )

    # -- top-up plans (see jasmin_credits.plans) ---------------------------------------------

    @property
    def plans_index(self) -> str:
        """Set of uids that have a plan (the plan scheduler's work list)."""
        return f"{self.keys.prefix}:plans"

    async def plan_fields(self, uid: str) -> dict[str, str]:
        """The raw plan hash of ``uid`` (empty: no plan)."""
        check_uid(uid)
        return _pairs(await self._command("HGETALL", self.keys.plan(uid)))

    async def plan_users(self) -> list[str]:
        """Every uid with a plan, sorted."""
        return sorted(await self._command("SMEMBERS", self.plans_index))

    async def forget_plan_user(self, uid: str) -> None:
        """Drop ``uid`` from the plan index (its plan is gone, e.g. wallet removed)."""
        await self._command("SREM", self.plans_index, uid)

    async def set_plan(self, uid: str, fields: dict[str, str] | None, *, actor: str,
                       create: bool = True) -> int:
        """Replace the plan definition of ``uid`` (None or empty removes it).

        Run bookkeeping survives; the plan's version goes up and is answered (0 when
        removed). An event ``plan_set`` records the change. Raises UnknownWallet when there
        is no wallet and ``create`` is False.
        """
        check_uid(uid)
        pairs = [str(x) for item in sorted((fields or {}).items()) for x in item]
        status, version = await self._run(
            "plan_set",
            [self.keys.wallet(uid), self.keys.plan(uid), self.keys.events(uid),
             self.keys.wallets, self.plans_index, self.keys.outbox],
            [uid, self.now_ms(), _ms(self.settings.events_retention), actor,
             "1" if create else "0", *pairs],
        )
        if status == NO_WALLET:
            raise UnknownWallet(f"user {uid} has no wallet")
        return int(version)

    async def run_plan(self, uid: str, which: str, *, version: str, op_id: str,
                       period: str, mark: int, month: str) -> tuple[int, int, int]:
        """One plan run, decided and applied atomically (``lua/plan_run.lua``).

        ``which`` is ``scheduled`` (``mark`` = the occurrence, epoch ms) or ``threshold``
        (``mark`` = the run's number in the day). Answers ``(status, added, balance)``.
        """
        check_uid(uid)
        if which not in ("scheduled", "threshold"):
            raise ValueError(f"unknown plan kind {which!r}")
        status, added, balance = await self._run(
            "plan_run",
            [self.keys.wallet(uid), self.keys.log(uid), self.keys.events(uid),
             self.keys.op(uid, op_id), self.keys.plan(uid), self.keys.outbox],
            [uid, which, version, op_id, self.now_ms(), _ms(self.settings.log_retention),
             _ms(self.settings.events_retention), _ms(self.settings.op_ttl), period,
             int(mark), month],
        )
        return int(status), int(added), int(balance)


def _pairs(flat: Any) -> dict[str, str]:
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat or []), 2)}


def _opt_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def _wallet(uid: str, raw: Any, periods: tuple[Period, ...]) -> Wallet:
    """A Wallet from its hash. Usage (see lua/_lib.lua): a period's counts are the stored
    ones only while the wallet still counts that very period."""
    w = _pairs(raw)

    use = w.get("use", "").split(" ")
    counted = {use[i]: (int(use[i + 1]), int(use[i + 2])) for i in range(0, len(use) - 2, 3)}
    usage = tuple(
        Usage(
            period=p,
            credits=counted.get(p.id, (0, 0))[0],
            msgs=counted.get(p.id, (0, 0))[1],
            credit_limit=_opt_int(w.get(LIMIT_FIELDS["credits", p.kind])),
            msg_limit=_opt_int(w.get(LIMIT_FIELDS["msgs", p.kind])),
        )
        for p in periods
    )
    return Wallet(
        uid=uid,
        balance=int(w.get("balance", 0)),
        reserved=int(w.get("reserved", 0)),
        overdraft=int(w.get("overdraft", 0)),
        low_balance=_opt_int(w.get("low_balance")),
        usage=usage,  # type: ignore[arg-type]
        created_ms=int(w.get("created", 0)),
        leased=int(w.get("leased", 0)),
    )


def _entry(entry_id: str, flat: Any) -> LogEntry:
    fields = _pairs(flat)
    return LogEntry(
        id=entry_id,
        ts_ms=int(fields.pop("ts", "0") or 0),
        type=fields.pop("type", ""),
        fields=fields,
    )
