"""Two gateways (two launchers, or a launcher and a drop-in interceptord) on one Redis,
loading one wallet at the same time."""

from __future__ import annotations

import contextlib

import pytest

from tests.e2e.credits_support import Books
from tests.faults.support import (
    ESME_ROK,
    Load,
    LoadResult,
    check_books,
    credits_gateway,
    leases,
    price,
    settlement,
)

ESME_RX_P_APPN = 0x65
AFFORDABLE = 300  # French messages the wallet can pay for
OVERDRAFT = 2_000
LEASE_MESSAGES = 20


@pytest.mark.parametrize("lease, second_charges", [(False, "launcher"), (True, "launcher"),
                                                   (True, "interceptord")])
def test_two_gateways_sharing_redis_never_overspend(lease, second_charges):
    """Concurrent load through two gateways on one wallet: no overspend, books exact; with
    credit leases too (each gateway holds messages against credit it carved out). The
    second gateway charges in our launcher, or in a drop-in interceptord beside it
    (``charging.mode: interceptor-pb``, leasing as well)."""
    unit = price("336")
    overrides = settlement()
    overrides["charging"] = leases(lease, messages=LEASE_MESSAGES, seconds=2, idle_seconds=1)
    second_overrides = overrides
    if second_charges == "interceptord":
        second_overrides = {**overrides,
                            "charging": {**overrides["charging"], "mode": "interceptor-pb"}}
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(credits_gateway("shared-a", overrides, funds=None))
        second = stack.enter_context(credits_gateway(
            "shared-b", second_overrides, funds=None, external_redis_port=first.redis_port,
            interceptord=second_charges == "interceptord"))
        books = Books(first)
        wallet = books.wallet("alice")
        start = books.top_up("alice", AFFORDABLE * unit - (wallet.balance if wallet else 0))
        books.configure("alice", overdraft=OVERDRAFT)
        loads = [Load(first, prefix="336", limit=600), Load(second, prefix="337", limit=600)]
        for load in loads:
            load.start()
        try:
            for load in loads:  # each stops at its limit
                load.join(180)
        finally:
            results = [load.finish() for load in loads]
        merged = LoadResult(sent=[s for r in results for s in r.sent])
        books_now = check_books([first, second], books, merged, start)
        wallet = books.wallet("alice")
        charged = sum(books_now.charged.values())
        counts = {f"gateway_{i}_ok": len(r.told(ESME_ROK)) for i, r in enumerate(results)}
        counts.update(refused=len(merged.told(ESME_RX_P_APPN)), charged_messages=sum(
            1 for v in books_now.charged.values() if v), final_balance=wallet.balance)
        print("shared redis:", counts)
        assert wallet.balance >= -OVERDRAFT
        assert charged == start - wallet.balance
        assert set(merged.statuses()) <= {ESME_ROK, ESME_RX_P_APPN}, merged.statuses()
        assert all(r.told(ESME_ROK) for r in results)  # both gateways charged the wallet
        affordable = (AFFORDABLE * unit + OVERDRAFT) // unit
        if not lease:
            assert len(merged.told(ESME_ROK)) == affordable
        else:
            # never more; fewer only by what the other gateway's leases held unused while
            # the last messages were refused (a gateway holds at most two leases)
            assert affordable - 4 * LEASE_MESSAGES <= len(merged.told(ESME_ROK)) <= affordable
