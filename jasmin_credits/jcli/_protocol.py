"""Jasmin's jCli protocol with the ``credit`` and ``price`` commands, and how to install it."""

from __future__ import annotations

import logging
from optparse import make_option
from typing import Any

from jasmin.protocols.cli.factory import JCliTelnetTransport
from jasmin.protocols.cli.jcli import JCliProtocol
from twisted.conch.insults import insults
from twisted.conch.telnet import TelnetBootstrapProtocol
from twisted.internet.defer import Deferred, DeferredList, succeed

from ._common import error_line, expected, one_line
from ._credit import CreditManager
from ._options import Action, options
from ._price import PriceManager

log = logging.getLogger("jcli")

CREDIT_EPILOG = """Amounts are credits written as decimals (e.g. 12.5); dates are
YYYY-MM-DD in the configured timezone.
Examples:
  credit -l                           list wallets
  credit -s alice                     alice's wallet, limits, usage, card
  credit -t alice 100 first payment   add 100 credits (creates the wallet)
  credit -t alice -25 refund of test  subtract 25 credits (never creates a wallet)
  credit -u alice                     set limits, then ok (ko cancels)
  credit --log alice --since 2026-11-01 --type charge,refund --page 2
  credit --log alice --csv /tmp/alice-log.csv
  credit --events alice
  credit -r alice closed account      remove the wallet (its logs are kept)
  credit --plan alice                 set a top-up plan, then ok (ko cancels):
    every monthly / day 1 / at 09:00 / reset 500 / cap 1000   monthly top-up to 500
    below 10 / recharge 50 / max_per_day 2                  auto-recharge
    none                                                     remove the plan
Session keys of credit -u:
  daily weekly monthly                credit limits per day, ISO week, month
  daily_messages weekly_messages monthly_messages   message limits
  overdraft                           credit allowed below zero
  low_balance                         an event when available credit falls below
  none as a value clears a limit or threshold."""

PRICE_EPILOG = """Examples:
  price -l                             cards and who they are assigned to
  price -s world --page 2              a card's entries, 30 per page
  price -q alice +447700900123 Hello   quote a message for alice
  price --reload                       re-read the card files on every gateway
  price -a world --user alice          assign card world to user alice
  price -a gold --group customers      assign card gold to group customers
  price -a none --user alice           remove alice's assignment"""


_STREAM = frozenset({"since", "until", "type", "page", "before", "csv"})
CREDIT_ACTIONS = (
    Action("list", "list"),
    Action("show", "show"),
    Action("top_up", "top_up", text=True),
    Action("update", "update"),
    Action("plan", "plan"),
    Action("remove", "remove", text=True),
    Action("log", "log", takes=_STREAM),
    Action("events", "events", takes=_STREAM),
)
"""What ``credit`` does, by option, and what each action accepts besides."""

PRICE_ACTIONS = (
    Action("list", "list"),
    Action("show", "show", takes=frozenset({"page"})),
    Action("quote", "quote", text=True),
    Action("reload", "reload"),
    Action("assign", "assign", takes=frozenset({"user", "group"})),
)
"""What ``price`` does, by option, and what each action accepts besides."""


class CreditsJCliProtocol(JCliProtocol):
    """jCli with ``credit`` and ``price``; login, help, TAB completion as for every command.

    ``runtime`` is the gateway's credits runtime. Our commands answer asynchronously;
    :meth:`when_idle` fires when every answer in progress has been sent (tests use it).
    Any exception a command raises becomes one ``Error: ...`` line, never a traceback or a
    dropped connection.
    """

    def __init__(self, runtime: Any, log_category: str = "jcli") -> None:
        super().__init__(log_category)
        self.runtime = runtime
        self._pending: set[Deferred] = set()
        for command in ("credit", "price"):
            if command not in self.commands:
                self.commands.append(command)

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        super().connectionMade()
        self.managers["credit"] = CreditManager(self, self.factory.pb, self.runtime)
        self.managers["price"] = PriceManager(self, self.factory.pb, self.runtime)

    # -- async bookkeeping ----------------------------------------------------------------

    def track(self, deferred: Deferred) -> None:
        """Remember an answer in progress until it fires."""
        if deferred.called:
            return
        self._pending.add(deferred)

        def done(result: Any) -> Any:
            self._pending.discard(deferred)
            return result

        deferred.addBoth(done)

    def when_idle(self) -> Deferred:
        """A Deferred firing once every answer in progress has been sent."""
        if not self._pending:
            return succeed(None)
        return DeferredList(list(self._pending), consumeErrors=True).addCallback(
            lambda _: self.when_idle())

    # -- dispatch -------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> Any:  # noqa: N802 - Twisted API
        try:
            return super().lineReceived(line)
        except Exception as error:
            log.exception("[sref:%s] jCli command failed", getattr(self, "sessionRef", "?"))
            return self.sendData(one_line(error_line(error)))

    def _run(self, name: str, method: str, arg: str, opts: Any) -> Any:
        manager = self.managers[name]
        try:
            return getattr(manager, method)(arg, opts)
        except Exception as error:
            if not expected(error):
                log.exception("[sref:%s] %s %s failed", self.sessionRef, name, method)
            return self.sendData(one_line(error_line(error)))

    @options([
        make_option("-l", "--list", action="store_true", help="List wallets"),
        make_option("-s", "--show", type="string", metavar="UID",
                    help="Show a wallet: balance, reserved, available, overdraft, limits and"
                         " usage per period with reset times, low-balance threshold, rate"
                         " card"),
        make_option("-t", "--top-up", dest="top_up", type="string", nargs=2,
                    metavar="UID AMOUNT",
                    help="Add AMOUNT credits (negative subtracts) to UID's wallet; a positive"
                         " AMOUNT creates a missing wallet; the rest of the line is the"
                         " reason"),
        make_option("-u", "--update", type="string", metavar="UID",
                    help="Set the limits, overdraft and low-balance threshold of UID's"
                         " existing wallet in an interactive session (ok: save, ko: exit)"),
        make_option("--plan", type="string", metavar="UID",
                    help="Set the automatic top-up plan (scheduled and/or threshold) of UID's"
                         " existing wallet in an interactive session (ok: save, ko: exit)"),
        make_option("-r", "--remove", type="string", metavar="UID",
                    help="Remove UID's wallet (its logs are kept; the balance is written"
                         " off in a 'removed' credit log entry); the rest of the line is"
                         " the reason"),
        make_option("--log", type="string", metavar="UID",
                    help="Show UID's credit log, newest first (every balance change)"),
        make_option("--events", type="string", metavar="UID",
                    help="Show UID's events log, newest first (top-ups, settings, limits,"
                         " low balance, removal)"),
        make_option("--since", type="string", metavar="YYYY-MM-DD",
                    help="With --log/--events: entries from this day on"),
        make_option("--until", type="string", metavar="YYYY-MM-DD",
                    help="With --log/--events: entries up to this day included"),
        make_option("--type", type="string", metavar="TYPE[,TYPE]",
                    help="With --log/--events: only these types (log types: topup, adjust,"
                         " plan, charge, refund, removed)"),
        make_option("--page", type="string", metavar="N",
                    help="With --log/--events: page N (20 entries a page)"),
        make_option("--before", type="string", metavar="CURSOR",
                    help="With --log/--events: the page after CURSOR (shown under a page)"),
        make_option("--csv", type="string", metavar="PATH",
                    help="With --log/--events: write every matching entry as CSV to PATH"
                         " on the gateway host"),
    ], "", epilog=CREDIT_EPILOG, actions=CREDIT_ACTIONS)
    def do_credit(self, arg: str, opts: Any) -> Any:
        """Credit wallets: balances, top-ups, limits and logs"""
        return self._dispatch("credit", CREDIT_ACTIONS, arg, opts)

    @options([
        make_option("-l", "--list", action="store_true",
                    help="List rate cards: entries, default price, assignments"),
        make_option("-s", "--show", type="string", metavar="CARD",
                    help="Show a card's entries (30 a page, see --page)"),
        make_option("--page", type="string", metavar="N", help="With -s: page N"),
        make_option("-q", "--quote", type="string", nargs=2, metavar="UID DESTINATION",
                    help="Quote a message (the rest of the line is its text) for UID:"
                         " country, prefix, card, encoding, parts, prices, and whether the"
                         " wallet would accept it now"),
        make_option("--reload", action="store_true",
                    help="Re-read the rate card files on this and every other gateway (a"
                         " broken file leaves the cards in force)"),
        make_option("-a", "--assign", type="string", metavar="CARD",
                    help="Assign CARD (none: remove the assignment) to --user or --group"),
        make_option("--user", type="string", metavar="UID", help="With -a: the user"),
        make_option("--group", type="string", metavar="GID", help="With -a: the group"),
    ], "", epilog=PRICE_EPILOG, actions=PRICE_ACTIONS)
    def do_price(self, arg: str, opts: Any) -> Any:
        """Rate cards: list, show, quote, reload, assign"""
        return self._dispatch("price", PRICE_ACTIONS, arg, opts)

    def _dispatch(self, name: str, actions: tuple[Action, ...], arg: str, opts: Any) -> Any:
        """Run the one action the line names (``@options`` refused two or strays)."""
        for action in actions:
            if getattr(opts, action.dest) is not None:
                return self._run(name, action.method, arg, opts)
        return self.sendData(f"Missing required option; type 'help {name}' for usage")


def install_jcli(jcli_factory: Any, runtime: Any) -> None:
    """Make every new connection to ``jcli_factory`` (Jasmin's JCliFactory) speak our jCli.

    Replaces the factory's ``protocol`` builder (Jasmin's lambda building
    ``JCliTelnetTransport(TelnetBootstrapProtocol, insults.ServerProtocol, JCliProtocol)``)
    with the same stack around :class:`CreditsJCliProtocol`. Connections already open keep
    the old protocol. The profile ``load`` jasmind runs at start goes through it too.
    """

    def build() -> JCliTelnetTransport:
        return JCliTelnetTransport(TelnetBootstrapProtocol, insults.ServerProtocol,
                                   CreditsJCliProtocol, runtime)

    jcli_factory.protocol = build


__all__ = ["CreditsJCliProtocol", "install_jcli"]
