"""The launcher's settlement child (``jasmin-credits-settled``) killed with SIGKILL under load."""

from __future__ import annotations

import os
import signal

import pytest

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books, settled_processes
from tests.faults.support import (
    ESME_ROK,
    Load,
    check_books,
    credits_gateway,
    key,
    leases,
    post_mortem,
    settlement,
    summary,
)


@pytest.mark.parametrize("lease", [False, True])
def test_settlement_child_killed_under_load(lease):
    """Settlement dies between reading Jasmin's events and acking them (its Redis calls
    half sent); the launcher starts a new child, which reads the unacked events again: every
    message is accepted all along (holds are jasmind's), and charged exactly once.

    With credit leases, the events it had not acked also write the leased holds: they are
    written once whichever child reads them."""
    overrides = settlement()
    overrides["charging"] = leases(lease, messages=20, seconds=5)
    with credits_gateway("settled", overrides) as gateway:
        config = gateway.credits_config
        [(first, parent)] = wait_until(lambda: settled_processes(config), 30,
                                       message="the launcher's jasmin-credits-settled running")
        start = Books(gateway).wallet("alice").balance
        load = Load(gateway)
        load.start()
        try:
            load.wait_sent(300)
            os.kill(first, signal.SIGKILL)
            killed_at = len(load.result.sent)
            [(second, _)] = wait_until(
                lambda: [p for p in settled_processes(config) if p[0] != first], 60,
                message="a new settlement child")
            load.wait_sent(300)
        finally:
            result = load.finish()
        books = Books(gateway)
        counts = summary(result, check_books(gateway, books, result, start))
        print("settled restart:", counts)
        assert settled_processes(config) == [(second, parent)]
        assert set(result.statuses()) == {ESME_ROK}, result.statuses()
        assert len(result.sent) >= killed_at + 300
        assert counts["told_ok"] == counts["smsc_ok"] == counts["charged"]
        # the trail a failed check prints (post_mortem), checked on a message charged once
        sent = result.sent[0]
        trail = post_mortem(gateway, books, key(sent.destination), sent.msgid)
        assert [kind for kind, _ in trail["log"]] == ["charge"], trail
        [hold] = trail["reservations"].values()
        assert hold["committed"] == "1" and trail["link"].startswith("alice "), trail
