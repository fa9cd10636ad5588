"""Several OS processes hold, charge and refund on one wallet at once: no overspend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from .sync_redis import sync_store

REPO = Path(__file__).resolve().parent.parent


class ContentionTests(SynchronousTestCase):
    def test_concurrent_processes_never_overspend(self):
        """4 processes x 300 holds: balance = initial - charged, >= -overdraft, log sums."""
        clock = Clock()
        clock.advance(1_795_000_000)
        store = sync_store(clock)
        initial, overdraft = 6000, 300
        self.successResultOf(store.top_up("shared", initial, op_id="fund", actor="test"))
        self.successResultOf(store.configure("shared", {"overdraft": overdraft}))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.contention_worker",
                 os.environ["JC_TEST_REDIS_PORT"], store.keys.prefix, "shared", "300", "20",
                 str(seed)],
                stdout=subprocess.PIPE, cwd=REPO, env=env, text=True)
            for seed in range(4)
        ]
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=300)
            self.assertEqual(worker.returncode, 0)
            results.append(json.loads(out.strip().splitlines()[-1]))
        charged = sum(r["committed"] for r in results)
        refused = sum(r["refused"] for r in results)
        wallet = self.successResultOf(store.wallet("shared"))
        self.assertGreater(refused, 0, "demand must exceed the credit for this test to bite")
        self.assertEqual(wallet.reserved, 0)
        self.assertEqual(wallet.balance, initial - charged)
        self.assertGreaterEqual(wallet.balance, -overdraft)
        entries, _ = self.successResultOf(store.log("shared", count=100_000))
        self.assertEqual(sum(e.int_field("amount") for e in entries), wallet.balance)
        self.assertEqual(
            len([e for e in entries if e.type == "charge"]),
            len({e.fields["msgid"] for e in entries if e.type == "charge"}),
            "each message is charged once",
        )
