"""The ``credit`` jCli command, driven through a StringTransport against a real Redis.

The helpers here (fake router, stub runtime, :class:`JCliSession`) are shared with
``test_jcli_price.py``.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from hashlib import md5
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from jasmin.protocols.cli.factory import JCliFactory
from jasmin.routing.jasminApi import Group, User
from twisted.internet import defer, reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from jasmin_credits.errors import ConfigError
from jasmin_credits.jcli import CreditsJCliProtocol, install_jcli
from jasmin_credits.pricing import Pricer
from jasmin_credits.ratecard import Rate, RateCard
from jasmin_credits.store import CreditStore, StoreSettings

from .redis_support import make_store

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78cDEHMZ]")
_TELNET = re.compile(rb"\xff[\xfb-\xfe].|\xff\xfa.*?\xff\xf0", re.S)

PROMPT = "jcli : "
NO_WALLET = ("Error: {uid} has no wallet, nothing changed: create it first with"
             " credit -t {uid} <amount>")


class FakeRouter:
    """The RouterPB calls jCli and the HTTP API make, over real Jasmin User/Group objects."""

    def __init__(self) -> None:
        self.groups = {gid: Group(gid) for gid in ("customers", "vip")}
        self.users = {
            "alice": User("alice", self.groups["customers"], "alice", "alicepwd"),
            "bob": User("bob", self.groups["vip"], "bob", "bobpwd"),
            "carol": User("carol", self.groups["customers"], "carol", "carolpwd"),
        }

    def getUser(self, uid):  # noqa: N802 - Jasmin API
        return self.users.get(uid)

    def getGroup(self, gid):  # noqa: N802 - Jasmin API
        return self.groups.get(gid)

    def authenticateUser(self, username, password, return_pickled=False):  # noqa: N802
        for user in self.users.values():
            if user.username == username and user.password == md5(password.encode()).digest():
                group = self.groups.get(user.group.gid)
                if not user.enabled or (group is not None and not group.enabled):
                    return None
                return user
        return None


def cards() -> dict[str, RateCard]:
    world = RateCard("world", 10000, (
        Rate("44", "GB", "United Kingdom", 8000),
        Rate("447", "GB", "United Kingdom mobile", 12000),
        Rate("33", "FR", "France", 9000),
    ))
    gold = RateCard("gold", None, (Rate("44", "GB", "United Kingdom", 5000),))
    big = RateCard("big", None, tuple(
        Rate(f"1{n:03d}", "US", f"Area {n}", 100 + n) for n in range(45)))
    return {c.name: c for c in (world, gold, big)}


class StubRuntime:
    """The attributes of the credits runtime that jCli and /credit use."""

    def __init__(self, store: CreditStore, *, decimals: int = 4, display_decimals: int = 2,
                 timezone: ZoneInfo | None = None) -> None:
        self.store = store
        self.decimals = decimals
        self.display_decimals = display_decimals
        self.timezone = timezone or store.settings.timezone
        self.cards = cards()
        self.assignments: dict[str, dict[str, str]] = {"user": {}, "group": {"vip": "gold"}}
        self.reload_error: ConfigError | None = None
        self.reloads = 0
        self.cut: list[str] = []
        """Wallets whose credit leases jCli ended (:meth:`wallet_cut`)."""
        self.cutting: defer.Deferred | None = None
        """What :meth:`wallet_cut` answers (None: done at once), as the lease book's
        shrinking of the ended leases in Redis."""
        self.cut_called: defer.Deferred | None = None
        """Fired the turn after :meth:`wallet_cut` (a test waits for the call)."""
        self._build()

    def wallet_cut(self, uid: str) -> defer.Deferred:
        self.cut.append(uid)
        if self.cut_called is not None:  # (the next turn: after what jCli does next)
            reactor.callLater(0, self.cut_called.callback, uid)
        return self.cutting or defer.succeed(None)

    def _build(self) -> None:
        self.pricer = Pricer(self.cards, "world", self.assignments["user"],
                             self.assignments["group"])

    async def reload_cards(self) -> str:
        if self.reload_error is not None:
            raise self.reload_error
        self.reloads += 1
        self._build()
        return ", ".join(f"{c.name} ({len(c.entries)} entries)" for c in self.cards.values())

    async def assign_card(self, kind: str, ident: str, card: str | None) -> None:
        if card is not None and card not in self.cards:
            raise ValueError(f"unknown card {card!r}")
        if card is None:
            self.assignments[kind].pop(ident, None)
        else:
            self.assignments[kind][ident] = card
        self._build()

    def card_assignments(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in self.assignments.items()}

    async def would_accept(self, uid, gid, quote) -> str:
        wallet = await self.store.wallet(uid)
        if wallet is None:
            return "no: no_wallet"
        if quote.total > wallet.available:
            return f"no: insufficient credit (available {wallet.available})"
        return "yes"


def jcli_config() -> SimpleNamespace:
    return SimpleNamespace(
        authentication=True, admin_username="jcliadmin",
        admin_password=md5(b"jclipwd").digest(), log_level=logging.CRITICAL,
        log_file="stdout", log_rotate="W6", log_format="%(message)s",
        log_date_format="%H:%M:%S")


class JCliSession:
    """One logged-in jCli connection over a StringTransport."""

    def __init__(self, runtime: StubRuntime, router: FakeRouter | None = None) -> None:
        self.router = router or FakeRouter()
        self.factory = JCliFactory(jcli_config(), None, self.router, None)
        install_jcli(self.factory, runtime)
        self.transport_proto = self.factory.buildProtocol(("127.0.0.1", 0))
        self.transport = StringTransport()
        self.transport_proto.makeConnection(self.transport)
        self.jcli: CreditsJCliProtocol = (
            self.transport_proto.protocol.protocol.terminalProtocol)
        self.transport_proto.dataReceived(b"jcliadmin\r\n")
        self.transport_proto.dataReceived(b"jclipwd\r\n")
        self.banner = self.output()

    def output(self) -> str:
        raw = _TELNET.sub(b"", self.transport.value())
        self.transport.clear()
        return _ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "")

    async def run(self, line: str) -> str:
        """Type ``line``, wait for every async answer; the output after the echoed line."""
        self.transport.clear()
        self.transport_proto.dataReceived(line.encode() + b"\r\n")
        await self.jcli.when_idle()
        out = self.output()
        assert "Traceback" not in out, out
        echo, _, rest = out.partition("\n")
        return rest

    def close(self) -> None:
        self.transport_proto.connectionLost(None)


def lines_of(out: str) -> list[str]:
    """The answer's lines without the final prompt."""
    return [line for line in out.split("\n") if line not in ("", PROMPT, "> ")]


class DownRedis:
    """A Redis client whose every call fails as if the server were gone."""

    def execute_command(self, *args, **kwargs):
        return defer.fail(ConnectionError("Connection refused"))


class JCliTestCase(TestCase):
    def temp_path(self, name: str = "out.csv") -> Path:
        """A path in a temporary directory removed after the test."""
        directory = tempfile.mkdtemp(prefix="jc-jcli-")
        self.addCleanup(shutil.rmtree, directory, True)
        return Path(directory) / name

    async def session(self, clock=None, **runtime_kwargs) -> JCliSession:
        self.store = await make_store(self, clock=clock)
        self.runtime = StubRuntime(self.store, **runtime_kwargs)
        session = JCliSession(self.runtime)
        self.addCleanup(session.close)
        return session


class CreditTopUpTests(JCliTestCase):
    async def test_login_then_prompt(self):
        """After login jCli shows its banner and the jcli prompt, as stock Jasmin does."""
        s = await self.session()
        self.assertIn("Welcome to Jasmin", s.banner)
        self.assertTrue(s.banner.endswith(PROMPT))

    async def test_top_up_creates_wallet_and_answers_balance(self):
        """credit -t adds credits, creates the wallet, logs actor jcli:<user> and reason."""
        s = await self.session()
        out = await s.run("credit -t alice 100 first payment")
        self.assertEqual(lines_of(out), ["Successfully added 100.00 credits to alice:"
                                         " balance 100.00"])
        self.assertTrue(out.endswith(PROMPT))
        wallet = await self.store.wallet("alice")
        self.assertEqual(wallet.balance, 1_000_000)
        entries, _ = await self.store.log("alice")
        self.assertEqual(entries[0].fields["actor"], "jcli:jcliadmin")
        self.assertEqual(entries[0].fields["reason"], "first payment")
        self.assertEqual(entries[0].type, "topup")
        self.assertEqual(self.runtime.cut, [])  # adding credit leaves leases alone

    async def test_negative_top_up_subtracts(self):
        """credit -t alice -25 reason: optparse does not read -25 as an option; it subtracts."""
        s = await self.session()
        await s.run("credit -t alice 100")
        out = await s.run("credit -t alice -25 refund of test traffic")
        self.assertEqual(lines_of(out), ["Successfully subtracted 25.00 credits from alice:"
                                         " balance 75.00"])
        entries, _ = await self.store.log("alice")
        self.assertEqual((entries[0].type, entries[0].fields["amount"]), ("adjust", "-250000"))
        self.assertEqual(entries[0].fields["reason"], "refund of test traffic")
        self.assertEqual(self.runtime.cut, ["alice"])  # this gateway's leases end at once

    async def test_negative_top_up_never_creates_a_wallet(self):
        """credit -t carol -25 on a user without a wallet is refused and creates nothing."""
        s = await self.session()
        out = await s.run("credit -t carol -25 typo")
        self.assertEqual(lines_of(out), [NO_WALLET.format(uid="carol")])
        self.assertTrue(out.endswith(PROMPT))
        self.assertEqual(await self.store.wallets(), [])
        self.assertEqual((await self.store.log("carol"))[0], [])
        self.assertEqual((await self.store.events("carol"))[0], [])
        self.assertIn("balance 5.00", await s.run("credit -t carol 5"))  # + still creates

    async def test_each_top_up_is_a_new_operation(self):
        """The same command twice adds twice: every command has its own op id."""
        s = await self.session()
        await s.run("credit -t alice 1.5")
        out = await s.run("credit -t alice 1.5")
        self.assertIn("balance 3.00", out)

    async def test_unknown_user_is_refused(self):
        """credit -t for a uid Jasmin does not know answers one line and creates nothing."""
        s = await self.session()
        out = await s.run("credit -t zed 10")
        self.assertEqual(lines_of(out), ["Unknown User: zed"])
        self.assertEqual(await self.store.wallets(), [])

    async def test_bad_amount_changes_nothing(self):
        """credit -t alice ten: one error line, no wallet, and the console still works."""
        s = await self.session()
        out = await s.run("credit -t alice ten")
        self.assertEqual(len(lines_of(out)), 1)
        self.assertIn("Error: amount", out)
        self.assertTrue(out.endswith(PROMPT))
        self.assertIsNone(await self.store.wallet("alice"))
        out = await s.run("credit -t alice 1.23456")
        self.assertIn("decimals", out)
        out = await s.run("credit -t alice 0")
        self.assertEqual(lines_of(out), ["Error: amount must not be 0"])
        self.assertIn("Successfully added", await s.run("credit -t alice 1"))

    async def test_missing_arguments_and_garbage(self):
        """Missing values, unknown options, no option and junk each answer one line."""
        s = await self.session()
        for line in ("credit -t alice", "credit -t", "credit --bogus", "credit",
                     "credit garbage here", "credit -s", "credit -s bad{uid}",
                     "credit --log alice --since yesterday", "credit --log alice --page x",
                     "credit --log alice --type charge,bogus",
                     "credit --log alice --before nope",
                     "credit --log alice --page 2 --before 1-0"):
            out = await s.run(line)
            self.assertEqual(len(lines_of(out)), 1, (line, out))
            self.assertTrue(out.endswith(PROMPT), (line, out))
        self.assertEqual(await self.store.wallets(), [])

    async def test_conflicting_and_stray_options_are_refused(self):
        """Two actions, an option the action does not take, or words after a command
        that reads none: one line naming them, and nothing changes."""
        s = await self.session()
        await s.run("credit -t alice 10")
        before = (await self.store.wallet("alice"), await self.store.log("alice"),
                  await self.store.events("alice"))
        usage = "; type 'help credit' for usage"
        for line, expected in (
            ("credit -s alice -t alice 5", "-s/--show and -t/--top-up cannot be used together"),
            ("credit -t alice 1 --log alice",
             "-t/--top-up and --log cannot be used together"),
            ("credit -s alice --page 2", "-s/--show does not take --page"),
            ("credit -t alice 1 --page 2", "-t/--top-up does not take --page"),
            ("credit -r alice --since 2026-01-01", "-r/--remove does not take --since"),
            ("credit -l --csv /tmp/x.csv", "-l/--list does not take --csv"),
            ("credit -s alice bob", "-s/--show takes nothing more, got 'bob'"),
            ("credit -l now", "-l/--list takes nothing more, got 'now'"),
            ("credit -u alice x", "-u/--update takes nothing more, got 'x'"),
        ):
            out = await s.run(line)
            self.assertEqual(lines_of(out), [f"Error: credit: {expected}{usage}"], line)
            self.assertTrue(out.endswith(PROMPT), line)
        path = self.temp_path()
        self.assertEqual(lines_of(await s.run(f"credit --log alice --csv {path} --page 2")),
                         ["Error: --csv writes every matching entry: use it without --page"
                          " or --before"])
        self.assertFalse(path.exists())
        after = (await self.store.wallet("alice"), await self.store.log("alice"),
                 await self.store.events("alice"))
        self.assertEqual(after, before)
        # What each action does accept still works.
        self.assertIn("Successfully added 1.00 credits to alice", await s.run(
            "credit -t alice 1 moved --log alice here"))
        self.assertIn("End of the credit log",
                      await s.run("credit --log alice --since 2026-01-01 --type topup"))

    async def test_store_unavailable_is_one_line(self):
        """With Redis gone every command answers 'credit store unavailable' and no traceback."""
        s = await self.session()
        self.runtime.store = CreditStore(DownRedis(), clock=reactor, reactor=reactor,
                                         settings=StoreSettings(call_timeout=0.5))
        for line in ("credit -t alice 5", "credit -l", "credit -s alice",
                     "credit --log alice", "credit -r alice"):
            out = await s.run(line)
            self.assertEqual(len(lines_of(out)), 1, (line, out))
            self.assertIn("credit store unavailable", out)
            self.assertTrue(out.endswith(PROMPT))


class CreditShowListTests(JCliTestCase):
    async def test_list_table(self):
        """credit -l: '#' header and rows aligned like user -l, within 80 columns, and a total."""
        s = await self.session()
        await s.run("credit -t alice 1234.5")
        await s.run("credit -t bob 7")
        await self.store.configure("alice", {"lim:credits:day": 1_000_000, "overdraft": 50_000})
        out = lines_of(await s.run("credit -l"))
        self.assertTrue(out[0].startswith("#User id"))
        for word in ("Balance", "Reserved", "Overdraft", "Daily", "Weekly", "Monthly", "Plan"):
            self.assertIn(word, out[0])
        alice = next(line for line in out if line.startswith("#alice"))
        self.assertIn("1234.50", alice)
        self.assertIn("0.00/100.00", alice)
        self.assertIn("5.00", alice)
        self.assertTrue(alice.endswith("-"))
        self.assertTrue(any(line.startswith("#bob") for line in out))
        self.assertEqual(out[-1], "Total wallets: 2")
        self.assertTrue(all(len(line) <= 80 for line in out), out)
        header_cols = out[0].index("Plan")
        self.assertEqual(alice.rindex("-"), header_cols)

    async def test_list_many_wallets_in_chunks(self):
        """credit -l with more wallets than it reads at a time: every one, in uid order."""
        from jasmin_credits.jcli._credit import LIST_CONCURRENCY

        uids = [f"u{i:04d}" for i in range(2 * LIST_CONCURRENCY + 7)]
        s = await self.session()
        for i, uid in enumerate(uids):
            await self.store.top_up(uid, i, op_id=f"t-{uid}", actor="test")
        out = lines_of(await s.run("credit -l"))
        rows = [line.split()[0][1:] for line in out[1:] if line.startswith("#u")]
        self.assertEqual(rows, uids)
        self.assertEqual(out[-1], f"Total wallets: {len(uids)}")

    async def test_list_empty(self):
        """credit -l without wallets says so."""
        s = await self.session()
        self.assertEqual(lines_of(await s.run("credit -l")), ["Total wallets: 0"])

    async def test_show_wallet(self):
        """credit -s shows balance, reserved, available, limits with reset times, card, plan."""
        s = await self.session(timezone=ZoneInfo("Europe/Paris"))
        await s.run("credit -t bob 20")
        await self.store.configure("bob", {"lim:credits:day": 100_000, "lim:msgs:month": 50,
                                           "overdraft": 10_000, "low_balance": 20_000})
        hold = await self.store.reserve("bob", 12000, 1)
        self.assertTrue(hold.ok)
        out = lines_of(await s.run("credit -s bob"))
        self.assertIn("uid bob", out)
        self.assertIn("gid vip", out)
        self.assertIn("balance 20.00", out)
        self.assertIn("reserved 1.20", out)
        self.assertIn("available 19.80", out)
        self.assertIn("overdraft 1.00", out)
        self.assertIn("low_balance 2.00 (an event when the available credit falls below)",
                      out)
        # Periods are UTC days in the store; shown in the runtime's timezone.
        self.assertIn("daily 1.20/10.00 credits used/limit, resets 2026-11-19 01:00 CET", out)
        self.assertIn("weekly_messages 1/- messages used/limit, resets 2026-11-23 01:00 CET",
                      out)
        self.assertIn("monthly_messages 1/50 messages used/limit, resets 2026-12-01 01:00 CET",
                      out)
        self.assertIn("rate_card gold", out)
        self.assertIn("plan -", out)

    async def test_show_default_card_and_no_limits(self):
        """A wallet without limits shows '-' limits and the default rate card."""
        s = await self.session()
        await s.run("credit -t alice 5")
        out = lines_of(await s.run("credit -s alice"))
        self.assertIn("daily 0.00/- credits used/limit, resets 2026-11-19 00:00 UTC", out)
        self.assertIn("low_balance -", out)
        self.assertIn("rate_card world", out)

    async def test_show_unknown_and_walletless(self):
        """credit -s: an unknown uid and a Jasmin user without wallet each get one line."""
        s = await self.session()
        self.assertEqual(lines_of(await s.run("credit -s zed")), ["Unknown User: zed"])
        self.assertEqual(lines_of(await s.run("credit -s carol")),
                         ["User carol has no wallet (credit -t carol <amount> creates one)"])

    async def test_remove_keeps_log(self):
        """credit -r removes the wallet, answers its balance; the log stays readable."""
        s = await self.session()
        await s.run("credit -t alice 9")
        out = lines_of(await s.run("credit -r alice"))
        self.assertEqual(out, ["Successfully removed the wallet of alice (balance was 9.00;"
                               " its logs are kept)"])
        self.assertIsNone(await self.store.wallet("alice"))
        self.assertIn("topup", await s.run("credit --log alice"))
        [row] = [line for line in lines_of(await s.run("credit --log alice --type removed"))
                 if line.startswith("#2")]
        self.assertEqual(row.split()[2:5], ["removed", "-9.00", "0.00"])
        self.assertIn("wallet removed", row)
        self.assertEqual(lines_of(await s.run("credit -r alice")),
                         ["Error: user alice has no wallet"])
        # the rest of the line is the reason (README: credit -r alice closed account)
        await s.run("credit -t alice 2")
        await s.run("credit -r alice closed account")
        removed = [line for line in lines_of(await s.run("credit --log alice --type removed"))
                   if " removed " in line]
        self.assertEqual(len(removed), 2)
        self.assertEqual(sum("closed account" in line for line in removed), 1)
        self.assertEqual(self.runtime.cut, [])

    async def test_remove_refused_while_messages_are_held(self):
        """A held message (or an open lease) keeps the wallet; this gateway's leases end,
        so that a later attempt can succeed."""
        s = await self.session()
        await s.run("credit -t alice 9")
        self.assertTrue((await self.store.reserve("alice", 10_000, 1)).ok)
        out = lines_of(await s.run("credit -r alice"))
        self.assertEqual(len(out), 1)
        self.assertIn("messages in flight or credit leases open", out[0])
        self.assertIsNotNone(await self.store.wallet("alice"))
        self.assertEqual(self.runtime.cut, ["alice"])


class CutAnswersAfterLeasesShrinkTests(JCliTestCase):
    async def pending_answer(self, s: JCliSession, line: str) -> str:
        """Type ``line`` while the lease book is still shrinking the ended leases: nothing
        answered until it is done; then the answer."""
        self.runtime.cutting, called = defer.Deferred(), defer.Deferred()
        self.runtime.cut_called = called
        s.transport.clear()
        s.transport_proto.dataReceived(line.encode() + b"\r\n")
        self.assertEqual(await called, "alice")  # (once Redis answered the store's call)
        self.assertNotIn("Successfully", s.output())
        self.runtime.cutting.callback(None)
        await s.jcli.when_idle()
        return s.output()

    async def test_debit_answers_once_the_ended_leases_gave_their_unused_part_back(self):
        """credit -t uid -N: the answer waits for runtime.wallet_cut, so the next message
        is judged without the unused part of this gateway's ended leases."""
        s = await self.session()
        await s.run("credit -t alice 100")
        self.assertIn("Successfully subtracted", await self.pending_answer(
            s, "credit -t alice -25 correction"))

    async def test_new_limits_answered_once_the_ended_leases_gave_their_unused_part_back(self):
        """credit -u ... ok (QA: daily_messages lowered under an open lease): the answer
        waits for runtime.wallet_cut."""
        s = await self.session()
        await s.run("credit -t alice 100")
        await s.run("credit -u alice")
        await s.run("daily_messages 60")
        self.assertIn("Successfully updated credit settings of alice",
                      await self.pending_answer(s, "ok"))


class CreditSessionTests(JCliTestCase):
    async def test_update_session_ok_applies_everything(self):
        """credit -u: key/value lines, bad lines answer and continue, ok applies all at once."""
        s = await self.session()
        await s.run("credit -t alice 1")
        out = await s.run("credit -u alice")
        self.assertIn("Updating credit settings of alice: (ok: save, ko: exit)", out)
        self.assertTrue(out.endswith("> "))
        for line in ("daily 100", "weekly 250.5", "monthly_messages 1000", "overdraft 5",
                     "low_balance 2.5"):
            self.assertEqual(lines_of(await s.run(line)), [], line)
        self.assertIn("Unknown credit key: yearly", await s.run("yearly 5"))
        self.assertIn("Error: daily", await s.run("daily ten"))
        self.assertIn("whole number", await s.run("daily_messages 1.5"))
        self.assertIn("Exit session before quitting", await s.run("quit"))
        self.assertIsNone((await self.store.wallet("alice")).usage[0].credit_limit)
        self.assertEqual(self.runtime.cut, [])
        out = await s.run("ok")
        self.assertEqual(self.runtime.cut, ["alice"])  # the new limits: leases end
        self.assertIn("Successfully updated credit settings of alice: daily=100.00,"
                      " weekly=250.50, monthly_messages=1000, overdraft=5.00,"
                      " low_balance=2.50", out)
        self.assertTrue(out.endswith(PROMPT))
        wallet = await self.store.wallet("alice")
        self.assertEqual([u.credit_limit for u in wallet.usage], [1_000_000, 2_505_000, None])
        self.assertEqual(wallet.usage[2].msg_limit, 1000)
        self.assertEqual((wallet.overdraft, wallet.low_balance), (50_000, 25_000))
        events, _ = await self.store.events("alice")
        # One settings event; the balance, 1, is below the new threshold.
        self.assertEqual([e.type for e in events], ["low_balance", "settings", "topup"])

    async def test_update_none_clears(self):
        """'daily none' clears the daily limit."""
        s = await self.session()
        await self.store.configure("alice", {"lim:credits:day": 5})
        await s.run("credit -u alice")
        await s.run("daily none")
        await s.run("ok")
        wallet = await self.store.wallet("alice")
        self.assertIsNone(wallet.usage[0].credit_limit)

    async def test_update_session_ko_cancels(self):
        """ko leaves the session, restores the prompt and changes nothing."""
        s = await self.session()
        await s.run("credit -t alice 1")
        await s.run("credit -u alice")
        await s.run("daily 100")
        out = await s.run("ko")
        self.assertTrue(out.endswith(PROMPT))
        self.assertIsNone((await self.store.wallet("alice")).usage[0].credit_limit)
        self.assertEqual([e.type for e in (await self.store.events("alice"))[0]], ["topup"])

    async def test_update_nothing_to_save_and_unknown_user(self):
        """ok without changes says so and stays in the session; -u refuses unknown users."""
        s = await self.session()
        self.assertEqual(lines_of(await s.run("credit -u zed")), ["Unknown User: zed"])
        await s.run("credit -t alice 1")
        await s.run("credit -u alice")
        out = await s.run("ok")
        self.assertIn("Nothing to save", out)
        self.assertTrue(out.endswith("> "))
        await s.run("ko")

    async def test_update_store_down_keeps_session(self):
        """ok with Redis down answers one line and keeps the session for ok or ko."""
        s = await self.session()
        await s.run("credit -t alice 1")
        await s.run("credit -u alice")
        await s.run("daily 1")
        self.runtime.store = CreditStore(DownRedis(), clock=reactor, reactor=reactor)
        out = await s.run("ok")
        self.assertIn("credit store unavailable", out)
        self.assertTrue(out.endswith("> "))
        self.assertTrue((await s.run("ko")).endswith(PROMPT))

    async def test_update_refused_without_wallet(self):
        """credit -u on a Jasmin user without a wallet opens no session and creates no
        wallet: a cap must not start billing (and refusing) a user who passed uncharged."""
        s = await self.session()
        out = await s.run("credit -u carol")
        self.assertEqual(lines_of(out), [NO_WALLET.format(uid="carol")])
        self.assertTrue(out.endswith(PROMPT))  # no session: the next line is a command
        self.assertIn("Incorrect command: daily 5", await s.run("daily 5"))
        self.assertEqual(await self.store.wallets(), [])
        self.assertEqual((await self.store.events("carol"))[0], [])

    async def test_update_refused_when_wallet_removed_meanwhile(self):
        """ok after the wallet was removed by someone else: refused, no wallet re-created."""
        s = await self.session()
        await s.run("credit -t alice 1")
        await s.run("credit -u alice")
        await s.run("daily 5")
        await self.store.remove("alice", "other")
        out = await s.run("ok")
        self.assertEqual(lines_of(out), [NO_WALLET.format(uid="alice")])
        self.assertIsNone(await self.store.wallet("alice"))
        self.assertEqual(await self.store.wallets(), [])
        self.assertTrue((await s.run("ko")).endswith(PROMPT))


class CreditLogTests(JCliTestCase):
    async def funded(self, count: int, clock=None) -> JCliSession:
        s = await self.session(clock=clock)
        for n in range(count):
            await self.store.top_up("alice", (n + 1) * 10_000, op_id=f"op{n}", actor="test",
                                    reason=f"payment {n + 1}")
        return s

    async def test_log_first_page_and_next(self):
        """--log pages 20 entries newest first and says how to get the next page."""
        s = await self.funded(25)
        out = lines_of(await s.run("credit --log alice"))
        self.assertTrue(out[0].startswith("#Time"))
        for word in ("Type", "Amount", "Balance", "Message id", "Country", "Parts", "Actor",
                     "Reason"):
            self.assertIn(word, out[0])
        rows = [line for line in out[1:] if line.startswith("#")]
        self.assertEqual(len(rows), 20)
        self.assertIn("payment 25", rows[0])
        self.assertIn("25.00", rows[0])
        self.assertIn("325.00", rows[0])  # running balance 10+20+...+250
        self.assertIn("2026-11-18", rows[0])
        self.assertIn("Credit log of alice, newest first: entries 1-20", out)
        more = out[-1]
        self.assertTrue(more.startswith("More entries: repeat the command with --page 2"
                                        " or --before "), more)
        cursor = more.rsplit(" ", 1)[1]
        page2 = lines_of(await s.run("credit --log alice --page 2"))
        rows2 = [line for line in page2 if line.startswith("#2")]
        self.assertEqual(len(rows2), 5)
        self.assertIn("payment 5", rows2[0])
        self.assertEqual(page2[-1], "End of the credit log")
        before = lines_of(await s.run(f"credit --log alice --before {cursor}"))
        self.assertEqual([r for r in before if r.startswith("#2")], rows2)
        self.assertIn("No credit log entries for alice on this page",
                      await s.run("credit --log alice --page 3"))

    async def test_log_type_and_dates(self):
        """--type filters types; --since/--until select days in the configured timezone."""
        s = await self.funded(3, clock=reactor)
        await s.run("credit -t alice -1 correction")
        out = lines_of(await s.run("credit --log alice --type adjust"))
        self.assertEqual(len([r for r in out if r.startswith("#2")]), 1)
        today = datetime.now(UTC).date()
        out = await s.run(f"credit --log alice --since {today} --until {today}")
        self.assertEqual(len([r for r in lines_of(out) if r.startswith("#2")]), 4)
        yesterday = today - timedelta(days=1)
        out = await s.run(f"credit --log alice --until {yesterday}")
        self.assertIn("No credit log entries for alice", out)
        out = await s.run(f"credit --log alice --since {today} --until {yesterday}")
        self.assertEqual(lines_of(out), ["Error: --since is after --until"])

    async def test_log_csv(self):
        """--csv writes every matching entry (no paging) and answers the row count."""
        s = await self.funded(23)
        path = self.temp_path()
        out = lines_of(await s.run(f"credit --log alice --csv {path}"))
        self.assertEqual(out, [f"Wrote 23 credit log rows of alice to {path}"])
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 23)
        self.assertEqual(rows[0]["reason"], "payment 23")
        self.assertEqual((rows[0]["amount"], rows[0]["balance"]), ("23.00", "276.00"))
        self.assertEqual(rows[0]["actor"], "test")
        bad = lines_of(await s.run("credit --log alice --csv /nonexistent/dir/x.csv"))
        self.assertEqual(len(bad), 1)
        self.assertIn("Error: cannot write /nonexistent/dir/x.csv", bad[0])

    async def test_events(self):
        """--events lists top-ups and settings changes with amounts in credits."""
        s = await self.funded(1)
        await s.run("credit -u alice")
        await s.run("daily 3")
        await s.run("ok")
        out = lines_of(await s.run("credit --events alice"))
        self.assertEqual(out[0].split(), ["#Time", "Type", "Details"])
        self.assertIn("settings", out[1])
        self.assertIn("lim:credits:day=3.00", out[1])
        self.assertIn("topup", out[2])
        self.assertIn("amount=1.00", out[2])
        self.assertEqual(out[-1], "End of the events")
        path = self.temp_path()
        self.assertIn("Wrote 2 events rows", await s.run(f"credit --events alice --csv {path}"))

    async def test_log_empty(self):
        """--log of a uid without entries says so."""
        s = await self.session()
        self.assertEqual(lines_of(await s.run("credit --log carol")),
                         ["No credit log entries for carol"])

    async def test_log_of_unknown_user(self):
        """--log/--events of a uid Jasmin does not know and without entries: Unknown User,
        no CSV written; a deleted Jasmin user's entries stay readable."""
        s = await self.session()
        path = self.temp_path()
        for line in ("credit --log zed", "credit --events zed", "credit --log zed --page 2",
                     f"credit --log zed --csv {path}"):
            self.assertEqual(lines_of(await s.run(line)), ["Unknown User: zed"], line)
        self.assertFalse(path.exists())
        await s.run("credit -t alice 3 gone soon")
        del s.router.users["alice"]
        self.assertIn("gone soon", await s.run("credit --log alice"))
        self.assertIn("topup", await s.run("credit --events alice"))


class CreditConsoleTests(JCliTestCase):
    async def test_help_and_completion(self):
        """help lists credit and price; help credit explains every option; TAB completes."""
        s = await self.session()
        out = await s.run("help")
        self.assertIn("credit", out)
        self.assertIn("price", out)
        out = await s.run("help credit")
        for option in ("--list", "--show", "--top-up", "--update", "--remove", "--log",
                       "--events", "--since", "--until", "--type", "--page", "--before",
                       "--csv", "daily_messages", "low_balance", "credit -t alice -25"):
            self.assertIn(option, out)
        s.transport.clear()
        s.transport_proto.dataReceived(b"cre\t")
        self.assertIn("dit ", s.output())

    async def test_persist_and_load_keep_balances(self):
        """persist says state lives in Redis; load (run by jasmind at start) keeps balances."""
        s = await self.session()
        # Jasmin's own managers write files under /etc/jasmin/store: keep only ours here.
        s.jcli.managers = {k: s.jcli.managers[k] for k in ("credit", "price")}
        await s.run("credit -t alice 42")
        out = await s.run("persist")
        self.assertIn("nothing to persist (profile:jcli-prod)", out)
        out = await s.run("load -p other")
        self.assertIn("credit balances are live in Redis: load leaves them untouched"
                      " (profile:other)", out)
        self.assertTrue(out.endswith(PROMPT))
        self.assertEqual((await self.store.wallet("alice")).balance, 420_000)

    async def test_stock_commands_still_work(self):
        """Jasmin's own commands answer as before (user -s through the router)."""
        s = await self.session()
        self.assertIn("Incorrect command", await s.run("nonsense"))


class PublicNamesTests(TestCase):
    def test_public_names(self):
        """The jcli package exports install_jcli and the protocol class, nothing else."""
        import jasmin_credits.jcli as package

        self.assertEqual(sorted(package.__all__), ["CreditsJCliProtocol", "install_jcli"])

    def test_install_swaps_protocol_builder(self):
        """install_jcli makes the factory build our protocol inside Jasmin's telnet stack."""
        factory = JCliFactory(jcli_config(), None, FakeRouter(), None)
        install_jcli(factory, object())
        transport = factory.buildProtocol(("127.0.0.1", 0))
        transport.makeConnection(StringTransport())
        self.addCleanup(transport.connectionLost, None)
        terminal = transport.protocol.protocol.terminalProtocol
        self.assertIsInstance(terminal, CreditsJCliProtocol)
        self.assertIn("credit", terminal.commands)
        self.assertIn("price", terminal.commands)
        self.assertIn("user", terminal.commands)
