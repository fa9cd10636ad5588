"""The SMSC answers errors, never answers, or drops the connection."""

from __future__ import annotations

import itertools
from collections import Counter

from jasmin_credits.localgateway import wait_until
from tests.e2e.credits_support import Books
from tests.faults.support import (
    ESME_ROK,
    LoadResult,
    Sent,
    check_books,
    credits_gateway,
    settlement,
)
from tests.smpp_client import SmppTestClient

FAIL, SILENT, DROP = "3399", "3398", "3397"
SMSC_ARGS = ["--fail", f"{FAIL}=ESME_RSUBMITFAIL", "--silent", SILENT, "--disconnect", DROP]
_numbers = itertools.count(1)


def _send(client: SmppTestClient, result: LoadResult, prefixes: list[str]) -> None:
    pending = {}
    for prefix in prefixes:
        sent = Sent(f"{prefix}{next(_numbers):07d}")
        result.sent.append(sent)
        pending[client.submit(sent.destination, b"hello")] = sent
    client.pump(lambda: all(client.response_for(s) is not None for s in pending), timeout=30)
    for seq, sent in pending.items():
        response = client.response_for(seq)
        sent.status = int(response.status)
        msgid = response.message_id
        sent.msgid = msgid.decode() if isinstance(msgid, bytes) else msgid


def test_smsc_errors_timeouts_and_disconnects():
    """Errors are never charged; unanswered and dropped messages are refunded by the sweeper."""
    overrides = settlement(unanswered_timeout=15, unanswered_policy="refund")
    with credits_gateway("smsc", overrides, smsc_args=SMSC_ARGS,
                         connector=("res_to 3", "con_loss_delay 1")) as gateway:
        books = Books(gateway)
        start = books.wallet("alice").balance
        result = LoadResult()
        client = SmppTestClient(gateway.smpp_port, "alice", "alicepwd")
        try:
            # Jasmin sends one message at a time per connector and resends an unanswered
            # one after res_to, forever: one silent message is enough to see it.
            windows = [["336"] * 6 + [FAIL] * 2] * 2 + [[SILENT] + ["336"] * 3] + [
                [DROP] + ["336"] * 3] * 2
            for window in windows:
                _send(client, result, window)
                gateway.wait_connector_bound("smsc", timeout=60)
            # The gateway keeps working afterwards.
            _send(client, result, ["336"] * 10)
        finally:
            client.close()
        assert all(s.status == ESME_ROK for s in result.sent), result.statuses()
        wait_until(lambda: {s.destination for s in result.sent[-10:]}
                   <= {r["destination_addr"] for r in gateway.smsc_received()}, 60,
                   message="the last messages delivered")
        books_now = check_books(gateway, books, result, start, told_ok_all_sent=False)
        smsc = Counter((r["destination_addr"][:4], r["status"]) for r in gateway.smsc_received())
        by_kind = Counter()
        for sent in result.sent:
            kind = sent.destination[:4] if sent.destination[:4] in (FAIL, SILENT, DROP) else "ok"
            by_kind[kind, "charged" if books_now.charged.get(sent.destination) else "free"] += 1
        print("smsc faults:", dict(by_kind), dict(smsc))
        assert by_kind[FAIL, "charged"] == by_kind[SILENT, "charged"] == 0
        assert by_kind[DROP, "charged"] == 0
        assert by_kind["ok", "charged"] >= 20  # only those lost with a dropped connection are free
        assert all(books_now.charged.get(s.destination) for s in result.sent[-10:])
