"""Hypothesis model test: random operation sequences on real Redis match a plain model."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from .sync_redis import sync_client, sync_store

CLIENT = None


class Res:
    """The model of one reservation: parts held unlinked or queued under its message id,
    charged under that message id or without one."""

    def __init__(self, ref, unit, parts):
        self.ref, self.unit = ref, unit
        self.unlinked, self.queued, self.msg_charged, self.charged = parts, 0, 0, 0
        self.msgid = None


class WalletMachine(RuleBasedStateMachine):
    reservations = Bundle("reservations")

    @initialize()
    def setup(self):
        global CLIENT
        CLIENT = CLIENT or sync_client()
        self.clock = Clock()
        self.clock.advance(1_795_000_000)
        self.store = sync_store(self.clock, client=CLIENT)
        self.case = SynchronousTestCase()
        self.balance = self.reserved = 0
        self.seq = 0
        self.exists = False
        self.all_res: list[Res] = []

    def run(self, deferred):
        return self.case.successResultOf(deferred)

    @rule(amount=st.integers(-500, 2000))
    def top_up(self, amount):
        self.seq += 1
        balance, _ = self.run(self.store.top_up("u", amount, op_id=f"op{self.seq}", actor="m"))
        self.balance += amount
        self.exists = True
        assert balance == self.balance

    @rule(target=reservations, unit=st.integers(0, 300), parts=st.integers(1, 4))
    def reserve(self, unit, parts):
        hold = self.run(self.store.reserve("u", unit, parts))
        if not self.exists:
            assert hold.no_wallet
            return None
        fits = unit * parts == 0 or self.balance - self.reserved >= unit * parts
        assert hold.ok == fits, (hold, self.balance, self.reserved)
        if not fits:
            return None
        self.reserved += unit * parts
        res = Res(hold.ref, unit, parts)
        self.all_res.append(res)
        return res

    @rule()
    def remove(self):
        """Removal: refused while parts are held; else the balance is written off."""
        if not self.exists:
            return
        held = any(r.unlinked + r.queued for r in self.all_res)
        removal = ensureDeferred(self.store.remove("u", "m"))
        if held:
            self.case.failureResultOf(removal, ValueError)
            return
        assert self.run(removal) == self.balance
        self.balance, self.exists = 0, False

    @rule(res=reservations)
    def link(self, res):
        if res is None or res.msgid is not None or res.unlinked == 0:
            return
        self.seq += 1
        res.msgid = f"m{self.seq}"
        self.run(self.store.link("u", res.ref, res.msgid, res.unlinked))
        res.queued, res.unlinked = res.unlinked, 0

    @rule(res=reservations, sent=st.booleans())
    def answer(self, res, sent):
        """Jasmin's submit_sm_resp by message id."""
        if res is None or res.msgid is None:
            return
        self.run(self.store.settle_message(res.msgid, sent, "ESME_RSUBMITFAIL"))
        self.reserved -= res.queued * res.unit
        if sent:
            self.balance -= res.queued * res.unit
            res.msg_charged += res.queued
        elif self.exists:  # an error after a charge (e.g. the sweeper's policy) gives it back
            self.balance += res.msg_charged * res.unit
            res.msg_charged = 0
        res.queued = 0

    @rule(res=consumes(reservations))
    def refund_all(self, res):
        if res is None:
            return
        self.run(self.store.refund("u", res.ref, "operator"))
        if not self.exists:  # a removed wallet's reservations settle nothing
            return
        self.reserved -= (res.unlinked + res.queued) * res.unit
        self.balance += (res.msg_charged + res.charged) * res.unit
        res.unlinked = res.queued = res.msg_charged = res.charged = 0

    @rule(res=reservations)
    def commit_all(self, res):
        if res is None:
            return
        self.run(self.store.commit("u", res.ref))
        held = res.unlinked + res.queued
        self.reserved -= held * res.unit
        self.balance -= held * res.unit
        res.msg_charged += res.queued
        res.charged += res.unlinked
        res.unlinked = res.queued = 0

    @rule(res=reservations)
    def release(self, res):
        if res is None:
            return
        self.run(self.store.release("u", res.ref))
        self.reserved -= res.unlinked * res.unit
        res.unlinked = 0

    @invariant()
    def books_balance(self):
        if not getattr(self, "store", None) or self.seq == 0:
            return
        wallet = self.run(self.store.wallet("u"))
        assert (wallet is not None) == self.exists
        balance = 0 if wallet is None else wallet.balance
        if wallet is not None:
            assert (wallet.balance, wallet.reserved) == (self.balance, self.reserved)
        entries, _ = self.run(self.store.log("u", count=100_000))
        assert sum(e.int_field("amount") for e in entries) == balance


WalletMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                           deadline=None)


class TestWalletModel(WalletMachine.TestCase):
    """Random sequences of top-ups, holds, links, answers, refunds and releases."""
