"""What the ``credit`` and ``price`` managers share: async answers, errors, tables, formats.

jCli managers answer synchronously; ours read Redis. :meth:`AsyncManager.answer` runs a
coroutine that returns the lines of the answer and sends them when it finishes: every line
but the last with ``prompt=False``, the last one followed by the prompt, exactly as a
synchronous jCli command ends. Whatever goes wrong becomes one ``Error: ...`` line (the
traceback of an unexpected error goes to the jCli log only), and the prompt comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jasmin.protocols.cli.managers import Manager
from twisted.internet.defer import Deferred

from jasmin_credits.errors import ConfigError, CreditsError, StoreUnavailable
from jasmin_credits.keys import check_uid
from jasmin_credits.money import format_amount

log = logging.getLogger("jcli")


class CommandError(Exception):
    """An answer of one line that ends a command: bad input, unknown user, ..."""


def error_line(error: BaseException) -> str:
    """One line telling the operator what went wrong (no traceback)."""
    if isinstance(error, CommandError):
        return str(error)
    if isinstance(error, StoreUnavailable):
        return f"Error: credit store unavailable, nothing changed: {error}"
    if isinstance(error, ConfigError):
        return f"Error: {error}"
    if isinstance(error, CreditsError | ValueError):
        return f"Error: {error}"
    return f"Error: unexpected {type(error).__name__}: {error} (details in the jCli log)"


def expected(error: BaseException) -> bool:
    """Errors answered without logging a traceback: bad input, refusals, store down."""
    return isinstance(error, CommandError | CreditsError | ValueError)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class AsyncManager(Manager):
    """A jCli manager whose answers come from coroutines.

    ``runtime`` is the gateway's credits runtime (``store``, ``pricer``, ``decimals``, ...).
    """

    managerName = "credits"

    def __init__(self, protocol: Any, pb: dict[str, Any], runtime: Any) -> None:
        super().__init__(protocol, pb)
        self.runtime = runtime

    # -- answering ----------------------------------------------------------------------

    def answer(self, work: Callable[[], Awaitable[Sequence[str] | str | None]]) -> Deferred:
        """Run ``work()``; send the lines it returns, then the prompt.

        ``work`` returning None sends nothing (it answered itself). The returned Deferred
        never fails; the protocol tracks it (see ``CreditsJCliProtocol.when_idle``).
        """

        async def run() -> Sequence[str] | str | None:
            return await work()

        deferred = Deferred.fromCoroutine(run())
        deferred.addCallbacks(self._send_lines, self._send_error)
        self.protocol.track(deferred)
        return deferred

    def _send_lines(self, lines: Sequence[str] | str | None) -> None:
        if lines is None:
            return
        if isinstance(lines, str):
            lines = [lines]
        try:
            for line in lines[:-1]:
                self.protocol.sendData(line, prompt=False)
            self.protocol.sendData(lines[-1] if lines else None)
        except Exception:
            log.exception("could not send a jCli answer (connection gone?)")

    def _send_error(self, failure: Any) -> None:
        error = failure.value
        if not expected(error):
            log.error("jCli credits command failed: %s", failure.getTraceback())
        try:
            self.protocol.sendData(one_line(error_line(error)))
        except Exception:
            log.exception("could not send a jCli error (connection gone?)")

    # -- Jasmin users -------------------------------------------------------------------

    @property
    def router(self) -> Any:
        return self.pb["router"]

    def jasmin_user(self, uid: str) -> Any:
        """Jasmin's User ``uid`` known to the router, or None."""
        try:
            return self.router.getUser(uid)
        except Exception:
            log.exception("router getUser(%r) failed", uid)
            return None

    def require_user(self, uid: str) -> Any:
        """Jasmin's User ``uid``; raises CommandError if the router does not know it."""
        check_uid_line(uid)
        user = self.jasmin_user(uid)
        if user is None:
            raise CommandError(f"Unknown User: {uid}")
        return user

    def no_wallet(self, uid: str) -> CommandError:
        """The refusal of a command that needs the wallet of ``uid`` and found none.

        Only a positive ``credit -t`` creates a wallet: a user without one is not billed
        (or, with ``wallets.missing: refuse``, refused), so setting limits or a plan, or
        subtracting, must not start billing them behind the operator's back.
        """
        return CommandError(f"Error: {uid} has no wallet, nothing changed: create it first"
                            f" with credit -t {uid} <amount>")

    async def require_wallet(self, uid: str) -> None:
        """Raise :meth:`no_wallet`'s error if ``uid`` has no wallet."""
        if await self.runtime.store.wallet(uid) is None:
            raise self.no_wallet(uid)

    def gid_of(self, uid: str) -> str | None:
        user = self.jasmin_user(uid)
        group = getattr(user, "group", None)
        return None if group is None else str(group.gid)

    @property
    def actor(self) -> str:
        """Who runs this command, for the logs: ``jcli:<jCli username>``."""
        auth = getattr(self.protocol, "authentication", {}) or {}
        name = auth.get("username") or "anonymous"
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        return f"jcli:{name}"

    # -- formats ------------------------------------------------------------------------

    def amount(self, units: int | None, none: str = "-") -> str:
        """Credits with the configured precision (``none`` when there is no value)."""
        if units is None:
            return none
        return format_amount(int(units), self.runtime.decimals, self.runtime.display_decimals)

    def local_time(self, ms: int | float, seconds: bool = True) -> str:
        """Epoch milliseconds as local time in the configured timezone."""
        moment = datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.runtime.timezone)
        return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M %Z")

    def local(self, moment: datetime) -> str:
        return moment.astimezone(self.runtime.timezone).strftime("%Y-%m-%d %H:%M %Z")

    def day_bounds(self, text: str, option: str) -> tuple[int, int]:
        """``YYYY-MM-DD`` in the configured timezone: (first ms of the day, last ms)."""
        try:
            day = datetime.strptime(text, "%Y-%m-%d")
        except ValueError:
            raise CommandError(
                f"Error: {option} must be a date YYYY-MM-DD, got '{text}'") from None
        start = datetime(day.year, day.month, day.day, tzinfo=self.runtime.timezone)
        end = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(),
                               tzinfo=self.runtime.timezone)
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000) - 1


def check_uid_line(uid: str) -> str:
    try:
        return check_uid(uid)
    except ValueError as error:
        raise CommandError(f"Error: {error}") from None


def page_number(text: str | None) -> int:
    if text is None:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise CommandError(f"Error: --page must be a number from 1, got '{text}'")
    return int(text)


def table(header: Sequence[str], rows: Iterable[Sequence[str]],
          right: Iterable[int] = ()) -> list[str]:
    """jCli's table style: ``#`` before each line, columns padded to their widest cell.

    Columns listed in ``right`` (numbers) are right-aligned.
    """
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    right = set(right)

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return ("#" + " ".join(padded)).rstrip()

    return [line(header)] + [line(r) for r in rows]
