"""The runtime's card handling on real Redis: reloads, assignments, quotes, across gateways;
and operators' cuts announced to every gateway."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from jasmin_credits.config import parse_config
from jasmin_credits.errors import ConfigError
from jasmin_credits.runtime import CreditsRuntime
from jasmin_credits.services import ReloadChannelListener

from .polling import eventually
from .redis_support import connect

CARD = """name: local
entries:
  - {prefix: "44", country: GB, price: %s}
"""


class RuntimeCardTests(TestCase):
    async def runtime(self, card_dir: Path, prefix: str) -> CreditsRuntime:
        config = parse_config({
            "redis": {"port": int(os.environ["JC_TEST_REDIS_PORT"]), "key_prefix": prefix},
            "cards": {"files": ["local.yaml"], "default": "local"},
            "settlement": {"enabled": False},
        }, "test.yaml", card_dir)
        runtime = CreditsRuntime(config, reactor=reactor, redis=await connect(self))
        return runtime

    def card_dir(self, price: str) -> Path:
        path = Path(self.mktemp())
        path.mkdir(parents=True)
        (path / "local.yaml").write_text(CARD % price)
        self.addCleanup(shutil.rmtree, path, True)
        return path

    async def test_reload_reads_changed_cards_and_refuses_broken_ones(self):
        """A changed card is picked up; a broken one is refused and the old card stays."""
        cards = self.card_dir("0.0500")
        runtime = await self.runtime(cards, f"t{uuid.uuid4().hex[:8]}")
        self.assertEqual(runtime.pricer.quote_text("alice", None, "447911", "hi").total, 500)
        (cards / "local.yaml").write_text(CARD % "0.0700")
        self.assertIn("local (1 entries)", await runtime.reload_cards())
        self.assertEqual(runtime.pricer.quote_text("alice", None, "447911", "hi").total, 700)
        (cards / "local.yaml").write_text(CARD % "-1")
        with self.assertRaises(ConfigError):
            await runtime.reload_cards()
        self.assertEqual(runtime.pricer.quote_text("alice", None, "447911", "hi").total, 700)

    async def test_assignment_and_reload_reach_another_gateway(self):
        """A card assigned or reloaded on one gateway is applied by another on the same Redis."""
        prefix = f"t{uuid.uuid4().hex[:8]}"
        cards = self.card_dir("0.0500")
        first = await self.runtime(cards, prefix)
        second = await self.runtime(cards, prefix)
        listener = ReloadChannelListener(second)
        self.addCleanup(listener.stop)
        await eventually(lambda: listener.factory.pool)
        (cards / "local.yaml").write_text(CARD % "0.0900")
        await first.reload_cards()
        await eventually(lambda: second.pricer.quote_text("a", None, "447911", "x").total == 900)
        with self.assertRaises(ValueError):
            await first.assign_card("user", "alice", "gold")
        await first.assign_card("user", "alice", "local")
        await eventually(lambda: second.card_assignments()["user"] == {"alice": "local"})

    async def test_a_cut_made_anywhere_reaches_another_gateway_at_once(self):
        """A subtraction or new settings, made by any process, are announced: a gateway
        listening ends its credit leases on that wallet without waiting for its next check
        of the lease epochs. A top-up is no cut."""
        prefix = f"t{uuid.uuid4().hex[:8]}"
        cards = self.card_dir("0.0500")
        first = await self.runtime(cards, prefix)
        second = await self.runtime(cards, prefix)
        cut: list[str] = []
        second.wallet_cut = cut.append
        listener = ReloadChannelListener(second)
        self.addCleanup(listener.stop)
        await eventually(lambda: listener.factory.pool)
        await first.store.top_up("alice", 1000, op_id="a", actor="t")
        await first.store.top_up("bob", 1000, op_id="b", actor="t")
        await first.store.top_up("bob", -10, op_id="c", actor="t")
        # (in order: an announced top-up would come first)
        await eventually(lambda: cut == ["bob"])
        await first.store.configure("alice", {"lim:credits:day": 100})
        await eventually(lambda: cut == ["bob", "alice"])

    async def test_would_accept_explains_the_refusal(self):
        """A quote says whether the wallet would take it now, and why not."""
        runtime = await self.runtime(self.card_dir("0.0500"), f"t{uuid.uuid4().hex[:8]}")
        quote = runtime.pricer.quote_text("alice", None, "447911", "hi")
        self.assertTrue((await runtime.would_accept("alice", None, quote)).startswith("yes"))
        await runtime.store.top_up("alice", 400, op_id="a", actor="t")
        self.assertEqual(await runtime.would_accept("alice", None, quote),
                         "no: insufficient_credit")
        await runtime.store.top_up("alice", 1000, op_id="b", actor="t")
        await runtime.store.configure("alice", {"lim:credits:day": 100})
        self.assertEqual(await runtime.would_accept("alice", None, quote),
                         "no: daily_credit_limit")
