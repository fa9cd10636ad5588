"""``credit --plan <uid>``: an interactive session setting a wallet's top-up plan.

Mixed into :class:`~jasmin_credits.jcli._credit.CreditManager`. The session collects
changes; ``ok`` merges them into the stored plan, validates the result and saves it in one
atomic call (``ko`` leaves without saving).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from jasmin.protocols.cli.managers import Session

from jasmin_credits.errors import UnknownWallet
from jasmin_credits.money import parse_amount
from jasmin_credits.plans import (
    EVERY,
    Plan,
    describe,
    parse_day,
    parse_time,
    parse_zone,
    plan_from_fields,
    with_changes,
)

from ._common import CommandError, error_line, one_line

PLAN_KEYS = ("every", "day", "at", "add", "reset", "start", "end", "cap", "timezone",
             "below", "recharge", "max_per_day", "scheduled", "threshold", "none", "remove")

PLAN_HELP = [
    "Scheduled: every daily|weekly|monthly, day mon..sun or 1..31|last, at HH:MM,",
    "add N or reset N (top up to N), start/end YYYY-MM-DD, cap N (per month), timezone NAME;",
    "threshold: below T, recharge N, max_per_day K; 'scheduled none' / 'threshold none'",
    "clear a part, 'none' (or 'remove') the whole plan",
]
_SCHEDULE_FIELDS = ("s_every", "s_at", "s_mode", "s_amount", "s_day", "s_start", "s_end",
                    "s_cap")
_THRESHOLD_FIELDS = ("t_below", "t_amount", "t_max_per_day")


class PlanSessionMixin:
    """The ``credit --plan`` session (needs AsyncManager's helpers)."""

    runtime: Any
    protocol: Any
    sessBuffer: dict[str, Any]
    sessionContext: Any

    def plan(self, arg: str, opts: Any) -> None:
        uid = opts.plan
        self.require_user(uid)  # type: ignore[attr-defined]
        self.answer(lambda: self._start_plan(uid))  # type: ignore[attr-defined]

    async def _start_plan(self, uid: str) -> None:
        """Open the ``credit --plan`` session, only on an existing wallet: a plan tops up a
        wallet, it does not create one (a user without a wallet is not billed)."""
        await self.require_wallet(uid)  # type: ignore[attr-defined]
        for line in PLAN_HELP:
            self.protocol.sendData(line, prompt=False)
        self.saving = False
        self.startSession(  # type: ignore[attr-defined]
            self.plan_session,
            annoucement=f"Updating the top-up plan of {uid}: (ok: save, ko: exit)",
            completitions=[*PLAN_KEYS, "ok", "ko"],
            sessionContext={"uid": uid})

    @Session
    def plan_session(self, cmd: str | None, arg: str, line: Any) -> Any:
        if self.saving:
            return self.protocol.sendData("Saving, please wait")
        if not cmd:
            if line:
                return self.protocol.sendData(f"Unknown plan key: {one_line(line)}")
            return self.protocol.sendData()
        if cmd == "ok":
            if not self.sessBuffer:
                return self.protocol.sendData("Nothing to save")
            return self._save_plan()
        if cmd not in PLAN_KEYS:
            return self.protocol.sendData(
                f"Unknown plan key: {cmd}; keys: {', '.join(PLAN_KEYS)}")
        try:
            self._plan_key(cmd, arg.strip())
        except Exception as error:
            return self.protocol.sendData(one_line(error_line(error)))
        return self.protocol.sendData()

    def _credits(self, key: str, text: str) -> str:
        return str(parse_amount(text, self.runtime.decimals, field=key))

    def _plan_key(self, cmd: str, text: str) -> None:
        buf = self.sessBuffer
        if cmd in ("none", "remove"):
            buf.clear()
            buf["remove"] = True
            return
        if text == "":
            raise CommandError(f"Error: {cmd} needs a value")
        clear = text.lower() == "none"
        buf.pop("remove", None)
        if cmd == "scheduled" or cmd == "threshold":
            if not clear:
                raise CommandError(f"Error: '{cmd} none' clears that part of the plan")
            for name in _SCHEDULE_FIELDS if cmd == "scheduled" else _THRESHOLD_FIELDS:
                buf[name] = None
            buf.pop("day_text", None)
        elif cmd == "every":
            if text not in EVERY:
                raise CommandError(f"Error: every must be one of {', '.join(EVERY)}")
            buf["s_every"] = text
        elif cmd == "day":
            parse_day(buf.get("s_every"), text)
            buf["day_text"] = text
        elif cmd == "at":
            buf["s_at"] = parse_time(text).strftime("%H:%M")
        elif cmd in ("add", "reset"):
            buf["s_mode"], buf["s_amount"] = cmd, self._credits(cmd, text)
        elif cmd in ("start", "end"):
            if clear:
                buf[f"s_{cmd}"] = None
            else:
                try:
                    buf[f"s_{cmd}"] = date.fromisoformat(text).isoformat()
                except ValueError:
                    raise CommandError(f"Error: {cmd} must be a date YYYY-MM-DD") from None
        elif cmd == "cap":
            buf["s_cap"] = None if clear else self._credits(cmd, text)
        elif cmd == "timezone":
            buf["s_tz"] = parse_zone(text).key
        elif cmd == "below":
            buf["t_below"] = self._credits(cmd, text)
        elif cmd == "recharge":
            buf["t_amount"] = self._credits(cmd, text)
        elif cmd == "max_per_day":
            if not text.isdigit() or int(text) < 1:
                raise CommandError("Error: max_per_day must be a whole number from 1")
            buf["t_max_per_day"] = text

    def _save_plan(self) -> Any:
        uid = self.sessionContext["uid"]
        changes = dict(self.sessBuffer)
        actor = self.actor  # type: ignore[attr-defined]
        self.saving = True

        async def save() -> None:
            try:
                answer = await self._store_plan(uid, changes, actor)
            except UnknownWallet:  # removed since the session began
                raise self.no_wallet(uid) from None  # type: ignore[attr-defined]
            finally:
                self.saving = False
            self.protocol.sendData(answer, prompt=False)
            self.stopSession()  # type: ignore[attr-defined]

        return self.answer(save)  # type: ignore[attr-defined]

    async def _store_plan(self, uid: str, changes: dict[str, Any], actor: str) -> str:
        store = self.runtime.store
        if changes.get("remove"):
            await store.set_plan(uid, None, actor=actor, create=False)
            return f"Successfully removed the top-up plan of {uid}"
        day_text = changes.pop("day_text", None)
        merged = with_changes(await store.plan_fields(uid), changes)
        if day_text is not None:
            merged["s_day"] = str(parse_day(merged.get("s_every"), day_text))
        if merged.get("s_every") == "daily":
            merged.pop("s_day", None)
        try:
            plan = plan_from_fields(merged, self.runtime.timezone)
        except (ValueError, TypeError) as error:
            raise CommandError(f"Error: {error}; nothing saved") from None
        if plan is None:
            await store.set_plan(uid, None, actor=actor, create=False)
            return f"Successfully removed the top-up plan of {uid}"
        await store.set_plan(uid, plan.fields(), actor=actor, create=False)
        return f"Successfully updated the top-up plan of {uid}: {self.plan_text(plan)}"

    def plan_text(self, plan: Plan | None) -> str:
        return describe(plan, self.runtime.store.now_ms(), self.amount)  # type: ignore

    async def plan_of(self, uid: str) -> str:
        """The plan line of ``credit -s`` / ``credit -l``."""
        try:
            plan = plan_from_fields(await self.runtime.store.plan_fields(uid),
                                    self.runtime.timezone)
        except ValueError as error:
            return f"- (invalid: {error})"
        return self.plan_text(plan)
