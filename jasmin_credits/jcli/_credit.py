"""The ``credit`` jCli command: wallets, top-ups, limits, the credit and events logs."""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Sequence
from typing import Any

from jasmin.protocols.cli.managers import PersistableManager, Session
from twisted.internet.defer import Deferred, FirstError, gatherResults

from jasmin_credits.errors import UnknownWallet
from jasmin_credits.money import parse_amount
from jasmin_credits.store import LogEntry

from ._common import (
    AsyncManager,
    CommandError,
    check_uid_line,
    error_line,
    one_line,
    page_number,
    table,
)
from ._plan import PlanSessionMixin

LIST_CONCURRENCY = 100
"""Wallets ``credit -l`` reads at a time."""

PAGE_SIZE = 20
CSV_BATCH = 500
LOG_TYPES = frozenset({"topup", "adjust", "plan", "charge", "refund", "removed"})
"""Credit log entry types; ``removed`` writes off the balance of a removed wallet."""
_CURSOR = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_PERIOD_NAMES = {"day": "daily", "week": "weekly", "month": "monthly"}

# Session key -> (store field, kind): kind 'credits' (an amount) or 'msgs' (a count).
SETTING_KEYS: dict[str, tuple[str, str]] = {
    "daily": ("lim:credits:day", "credits"),
    "weekly": ("lim:credits:week", "credits"),
    "monthly": ("lim:credits:month", "credits"),
    "daily_messages": ("lim:msgs:day", "msgs"),
    "weekly_messages": ("lim:msgs:week", "msgs"),
    "monthly_messages": ("lim:msgs:month", "msgs"),
    "overdraft": ("overdraft", "credits"),
    "low_balance": ("low_balance", "credits"),
}
# Event fields holding credit amounts (stored as integers of units; shown as credits with
# the configured precision): plan_set's plan fields and plan_skipped's figures included.
_AMOUNT_FIELDS = frozenset({
    "amount", "balance", "available", "threshold", "overdraft", "low_balance",
    "lim:credits:day", "lim:credits:week", "lim:credits:month",
    "s_amount", "s_cap", "t_below", "t_amount", "target", "cap", "used",
})
_CREDIT_LIMIT_CODES = {"2", "3", "4"}

SESSION_HELP = [
    "Keys: daily weekly monthly (credit limits), overdraft, low_balance (credits),",
    "daily_messages weekly_messages monthly_messages (message limits); none clears",
]


class CreditManager(PlanSessionMixin, AsyncManager, PersistableManager):
    """Logic of the ``credit`` command. Store calls are coroutines answered asynchronously.

    ``persist`` and ``load``: wallets, both logs and card assignments are written to Redis
    at every change (Redis keeps them with its own persistence, AOF), so ``persist`` has
    nothing to write and ``load`` (which jasmind runs at every start) must not touch them:
    both only say so in one line. Jasmin's ``load`` reads the profile of users and groups;
    it never reaches our keys.
    """

    managerName = "credit"
    saving = False

    # -- persist / load -----------------------------------------------------------------

    def persist(self, arg: str, opts: Any) -> None:
        self.protocol.sendData(
            "credit balances, logs and card assignments are stored in Redis at every"
            " change: nothing to persist (profile:%s)" % opts.profile, prompt=False)

    def load(self, arg: str, opts: Any) -> None:
        self.protocol.sendData(
            "credit balances are live in Redis: load leaves them untouched (profile:%s)"
            % opts.profile, prompt=False)

    # -- credit -l ----------------------------------------------------------------------

    def list(self, arg: str, opts: Any) -> None:
        self.answer(self._list)

    async def _list(self) -> list[str]:
        store = self.runtime.store
        uids = await store.wallets()
        rows: list[list[str]] = []
        # LIST_CONCURRENCY wallets at a time: a chunk's calls go out together, so the
        # console waits about one round trip per chunk rather than two per wallet, and
        # never has thousands of calls waiting on their timeouts at once.
        for start in range(0, len(uids), LIST_CONCURRENCY):
            chunk = uids[start:start + LIST_CONCURRENCY]
            try:
                found = await gatherResults([Deferred.fromCoroutine(self._row(uid))
                                             for uid in chunk], consumeErrors=True)
            except FirstError as error:  # answer the first error itself (store down...)
                error.subFailure.raiseException()
            rows += [row for row in found if row is not None]
        if not rows:
            return ["Total wallets: 0"]
        header = ["User id", "Balance", "Reserved", "Overdraft", "Daily", "Weekly",
                  "Monthly", "Plan"]
        lines = table(header, rows, right=(1, 2, 3, 4, 5, 6))
        lines.append("Daily/Weekly/Monthly: credits used/limit ('-': no limit)")
        lines.append(f"Total wallets: {len(rows)}")
        return lines

    async def _row(self, uid: str) -> list[str] | None:
        """One ``credit -l`` row (None: the wallet was removed meanwhile)."""
        w = await self.runtime.store.wallet(uid)
        if w is None:
            return None
        day, week, month = (self._used_of(u.credits, u.credit_limit) for u in w.usage)
        return [w.uid, self.amount(w.balance), self.amount(w.reserved),
                self.amount(w.overdraft), day, week, month, await self.plan_of(w.uid)]

    def _used_of(self, used: int, limit: int | None) -> str:
        return f"{self.amount(used)}/{self.amount(limit)}"

    # -- credit -s ----------------------------------------------------------------------

    def show(self, arg: str, opts: Any) -> None:
        uid = check_uid_line(opts.show)
        self.answer(lambda: self._show(uid))

    async def _show(self, uid: str) -> list[str]:
        user = self.jasmin_user(uid)
        wallet = await self.runtime.store.wallet(uid)
        if wallet is None:
            if user is None:
                raise CommandError(f"Unknown User: {uid}")
            return [f"User {uid} has no wallet (credit -t {uid} <amount> creates one)"]
        gid = None if user is None else str(user.group.gid)
        lines = [f"uid {uid}"]
        if user is None:
            lines.append("jasmin_user none (the user is not known to Jasmin)")
        else:
            lines.append(f"gid {gid}")
        lines += [
            f"balance {self.amount(wallet.balance)}",
            f"reserved {self.amount(wallet.reserved)}"
            + (f" (of which {self.amount(wallet.leased)} in gateways' credit leases, not yet "
               "used)" if wallet.leased else ""),
            f"available {self.amount(wallet.available)}",
            f"overdraft {self.amount(wallet.overdraft)}",
        ]
        for usage in wallet.usage:
            name = _PERIOD_NAMES[usage.period.kind]
            resets = self.local(usage.period.end)
            lines.append(f"{name} {self._used_of(usage.credits, usage.credit_limit)}"
                         f" credits used/limit, resets {resets}")
            limit = "-" if usage.msg_limit is None else str(usage.msg_limit)
            lines.append(f"{name}_messages {usage.msgs}/{limit}"
                         f" messages used/limit, resets {resets}")
        low = wallet.low_balance
        lines.append(f"low_balance {self.amount(low)}" + (
            "" if low is None else " (an event when the available credit falls below)"))
        lines.append(f"rate_card {self._card_name(uid, gid)}")
        lines.append(f"plan {await self.plan_of(uid)}")
        if wallet.created_ms:
            lines.append(f"created {self.local_time(wallet.created_ms)}")
        return lines

    def _card_name(self, uid: str, gid: str | None) -> str:
        try:
            card = self.runtime.pricer.card_for(uid, gid)
        except Exception as error:
            return f"- (error: {error})"
        return "- (none: messages are not priced)" if card is None else card.name

    # -- credit -t ----------------------------------------------------------------------

    def top_up(self, arg: str, opts: Any) -> None:
        uid, text = opts.top_up
        self.require_user(uid)
        units = parse_amount(text, self.runtime.decimals, field="amount", allow_negative=True)
        if units == 0:
            raise CommandError("Error: amount must not be 0")
        reason = one_line(arg)
        actor = self.actor
        self.answer(lambda: self._top_up(uid, units, reason, actor))

    async def _top_up(self, uid: str, units: int, reason: str, actor: str) -> str:
        # Only adding credit creates a wallet: a subtraction (often a typo or a correction)
        # must not start billing a user who had none, at a negative balance.
        try:
            balance, _ = await self.runtime.store.top_up(
                uid, units, op_id=f"jcli-{uuid.uuid4().hex}", actor=actor, reason=reason,
                kind="topup" if units > 0 else "adjust", create=units > 0)
        except UnknownWallet:
            raise self.no_wallet(uid) from None
        if units < 0:
            # no message more on credit leased before; unused lease credit back first
            await self.runtime.wallet_cut(uid)
        if units > 0:
            return (f"Successfully added {self.amount(units)} credits to {uid}:"
                    f" balance {self.amount(balance)}")
        return (f"Successfully subtracted {self.amount(-units)} credits from {uid}:"
                f" balance {self.amount(balance)}")

    # -- credit -r ----------------------------------------------------------------------

    def remove(self, arg: str, opts: Any) -> None:
        uid = check_uid_line(opts.remove)
        actor = self.actor
        reason = one_line(arg) or "wallet removed"
        self.answer(lambda: self._remove(uid, actor, reason))

    async def _remove(self, uid: str, actor: str, reason: str) -> str:
        try:
            balance = await self.runtime.store.remove(uid, actor, reason)
        except UnknownWallet:
            raise CommandError(f"Error: user {uid} has no wallet") from None
        except ValueError:  # messages in flight or leases open: end this gateway's
            await self.runtime.wallet_cut(uid)
            raise
        return (f"Successfully removed the wallet of {uid} (balance was"
                f" {self.amount(balance)}; its logs are kept)")

    # -- credit -u (interactive) ----------------------------------------------------------

    def update(self, arg: str, opts: Any) -> None:
        uid = opts.update
        self.require_user(uid)
        self.answer(lambda: self._start_update(uid))

    async def _start_update(self, uid: str) -> None:
        """Open the ``credit -u`` session, only on an existing wallet (see ``no_wallet``)."""
        await self.require_wallet(uid)
        for line in SESSION_HELP:
            self.protocol.sendData(line, prompt=False)
        self.saving = False
        self.startSession(
            self.update_session,
            annoucement=f"Updating credit settings of {uid}: (ok: save, ko: exit)",
            completitions=[*SETTING_KEYS, "ok", "ko"],
            sessionContext={"uid": uid})

    @Session
    def update_session(self, cmd: str | None, arg: str, line: Any) -> Any:
        if self.saving:
            return self.protocol.sendData("Saving, please wait")
        if cmd is None or cmd == "":
            if line:
                return self.protocol.sendData(f"Unknown credit key: {one_line(line)}")
            return self.protocol.sendData()
        if cmd == "ok":
            if not self.sessBuffer:
                return self.protocol.sendData("Nothing to save")
            return self._save()
        if cmd not in SETTING_KEYS:
            return self.protocol.sendData(
                f"Unknown credit key: {cmd}; keys: {', '.join(SETTING_KEYS)}")
        field, kind = SETTING_KEYS[cmd]
        try:
            self.sessBuffer[field] = self._setting_value(cmd, kind, arg.strip())
        except Exception as error:
            return self.protocol.sendData(one_line(error_line(error)))
        return self.protocol.sendData()

    def _setting_value(self, key: str, kind: str, text: str) -> int | None:
        if text == "":
            raise CommandError(f"Error: {key} needs a value (or none)")
        if text.lower() == "none":
            return None
        if kind == "credits":
            return parse_amount(text, self.runtime.decimals, field=key)
        if not text.isdigit():
            raise CommandError(f"Error: {key} must be a whole number of messages, got '{text}'")
        return int(text)

    def _save(self) -> Any:
        uid = self.sessionContext["uid"]
        settings = dict(self.sessBuffer)
        self.saving = True

        async def save() -> None:
            try:
                # create=False: the wallet may have been removed since the session began.
                await self.runtime.store.configure(uid, settings, create=False)
            except UnknownWallet:
                raise self.no_wallet(uid) from None
            finally:
                self.saving = False
            # new limits apply to the next message, on usage without this gateway's
            # ended leases (their unused part given back before the answer)
            await self.runtime.wallet_cut(uid)
            self.protocol.sendData(
                f"Successfully updated credit settings of {uid}: {self._describe(settings)}",
                prompt=False)
            self.stopSession()

        return self.answer(save)

    def _describe(self, settings: dict[str, int | None]) -> str:
        names = {field: key for key, (field, _) in SETTING_KEYS.items()}
        parts = []
        for field, value in settings.items():
            kind = SETTING_KEYS[names[field]][1]
            shown = "none" if value is None else (
                self.amount(value) if kind == "credits" else str(value))
            parts.append(f"{names[field]}={shown}")
        return ", ".join(parts)

    # -- credit --log / --events ------------------------------------------------------------

    def log(self, arg: str, opts: Any) -> None:
        self._stream("log", opts.log, opts)

    def events(self, arg: str, opts: Any) -> None:
        self._stream("events", opts.events, opts)

    def _stream(self, which: str, uid: str, opts: Any) -> None:
        uid = check_uid_line(uid)
        since = self.day_bounds(opts.since, "--since")[0] if opts.since else None
        until = self.day_bounds(opts.until, "--until")[1] if opts.until else None
        if since is not None and until is not None and since > until:
            raise CommandError("Error: --since is after --until")
        types = None
        if opts.type:
            types = frozenset(t.strip() for t in opts.type.split(",") if t.strip())
            unknown = types - LOG_TYPES
            if which == "log" and unknown:
                raise CommandError(
                    f"Error: unknown log type(s) {', '.join(sorted(unknown))};"
                    f" types: {', '.join(sorted(LOG_TYPES))}")
        if opts.page is not None and opts.before is not None:
            raise CommandError("Error: use --page or --before, not both")
        if opts.csv and (opts.page is not None or opts.before is not None):
            raise CommandError("Error: --csv writes every matching entry: use it without"
                               " --page or --before")
        page = page_number(opts.page)
        if opts.before is not None and not _CURSOR.match(opts.before):
            raise CommandError(
                f"Error: --before needs a cursor such as 1763456789012-0, got '{opts.before}'")
        query = {"since_ms": since, "until_ms": until, "types": types}
        known = self.jasmin_user(uid) is not None
        if opts.csv:
            self.answer(lambda: self._csv(which, uid, query, opts.csv, known))
        else:
            self.answer(lambda: self._page(which, uid, query, page, opts.before, known))

    async def _check_known(self, which: str, uid: str, known: bool) -> None:
        """Refuse a uid Jasmin does not know and that has no entries at all.

        The logs outlive the wallet and the Jasmin user (billing needs them), so a uid
        unknown to Jasmin is read as long as it has entries.
        """
        if not known and not (await self._reader(which)(uid, count=1))[0]:
            raise CommandError(f"Unknown User: {uid}")

    def _reader(self, which: str) -> Any:
        store = self.runtime.store
        return store.log if which == "log" else store.events

    async def _page(self, which: str, uid: str, query: dict[str, Any], page: int,
                    before: str | None, known: bool) -> list[str]:
        await self._check_known(which, uid, known)
        read = self._reader(which)
        if before is not None:
            entries, _ = await read(uid, count=PAGE_SIZE + 1, before=before, **query)
            shown, more = entries[:PAGE_SIZE], len(entries) > PAGE_SIZE
            first = 1
        else:
            wanted = page * PAGE_SIZE
            entries, _ = await read(uid, count=wanted + 1, **query)
            shown, more = entries[wanted - PAGE_SIZE:wanted], len(entries) > wanted
            first = wanted - PAGE_SIZE + 1
        title = "credit log" if which == "log" else "events"
        if not shown:
            return [f"No {title} entries for {uid}" + (" on this page" if page > 1 else "")]
        lines = self._log_table(shown) if which == "log" else self._events_table(shown)
        position = (f"entries {first}-{first + len(shown) - 1}" if before is None
                    else f"{len(shown)} entries before {before}")
        lines.append(f"{title.capitalize()} of {uid}, newest first: {position}")
        if more:
            hint = (f"--page {page + 1} or --before {shown[-1].id}" if before is None
                    else f"--before {shown[-1].id}")
            lines.append(f"More entries: repeat the command with {hint}")
        else:
            lines.append("End of the " + title)
        return lines

    def _log_table(self, entries: Sequence[LogEntry]) -> list[str]:
        rows = []
        for e in entries:
            f = e.fields
            rows.append([
                self.local_time(e.ts_ms), e.type,
                self.amount(e.int_field("amount")), self.amount(e.int_field("balance")),
                f.get("msgid") or "-", f.get("country") or "-",
                f.get("parts") if f.get("parts") not in (None, "", "0") else "-",
                f.get("actor") or "-", one_line(f.get("reason") or "-"),
            ])
        header = ["Time", "Type", "Amount", "Balance", "Message id", "Country", "Parts",
                  "Actor", "Reason"]
        return table(header, rows, right=(2, 3, 6))

    def _events_table(self, entries: Sequence[LogEntry]) -> list[str]:
        rows = [[self.local_time(e.ts_ms), e.type, self._details(e)] for e in entries]
        return table(["Time", "Type", "Details"], rows)

    def _details(self, entry: LogEntry) -> str:
        parts = []
        for key, value in entry.fields.items():
            if value in ("", None):
                continue
            parts.append(f"{key}={one_line(self._event_value(entry, key, value))}")
        return " ".join(parts) or "-"

    def _event_value(self, entry: LogEntry, key: str, value: str) -> str:
        """An event field as operators read it: amounts in credits, the rest as stored."""
        if value != "none" and value.lstrip("-").isdigit() and (
                key in _AMOUNT_FIELDS or (
                    key == "limit" and entry.fields.get("code") in _CREDIT_LIMIT_CODES)):
            return self.amount(int(value))
        return value

    async def _csv(self, which: str, uid: str, query: dict[str, Any], path: str,
                   known: bool) -> str:
        await self._check_known(which, uid, known)
        read = self._reader(which)
        entries: list[LogEntry] = []
        before = None
        while True:
            batch, cursor = await read(uid, count=CSV_BATCH, before=before, **query)
            entries += batch
            if cursor is None or len(batch) < CSV_BATCH:
                break
            before = cursor
        if which == "log":
            columns = ["id", "time", "type", "amount", "balance", "msgid", "country", "dest",
                       "parts", "actor", "reason", "ref"]
        else:
            extra = sorted({k for e in entries for k in e.fields})
            columns = ["id", "time", "type", *extra]
        try:
            with open(path, "w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(columns)
                for e in entries:
                    values = {**e.fields, "id": e.id, "time": self.local_time(e.ts_ms),
                              "type": e.type}
                    if which == "log":
                        for key in ("amount", "balance"):
                            if key in e.fields:
                                values[key] = self.amount(e.int_field(key))
                    else:
                        values.update({key: self._event_value(e, key, value)
                                       for key, value in e.fields.items()})
                    writer.writerow([values.get(c, "") for c in columns])
        except OSError as error:
            raise CommandError(f"Error: cannot write {path}: {error.strerror or error}") from None
        title = "credit log" if which == "log" else "events"
        return f"Wrote {len(entries)} {title} rows of {uid} to {path}"

