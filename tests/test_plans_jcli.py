"""``credit --plan`` sessions and the plan shown by ``credit -s`` / ``credit -l``, driven
through a StringTransport against the real Redis."""

from __future__ import annotations

import csv

from .test_jcli_credit import NO_WALLET, PROMPT, JCliTestCase, lines_of


class PlanSessionTests(JCliTestCase):
    async def test_scheduled_and_threshold_plan_saved_and_shown(self):
        """Keys collect a monthly reset plan and a threshold; ok saves; -s and -l show it."""
        s = await self.session()
        await s.run("credit -t alice 1")
        out = await s.run("credit --plan alice")
        self.assertIn("Updating the top-up plan of alice: (ok: save, ko: exit)", out)
        self.assertTrue(out.endswith("> "))
        for line in ("every monthly", "day last", "at 09:00", "reset 500", "cap 900",
                     "below 10", "recharge 50", "max_per_day 2"):
            self.assertEqual(lines_of(await s.run(line)), [], line)
        self.assertIn("Unknown plan key: yearly", await s.run("yearly 5"))
        self.assertIn("Error: time of day", await s.run("at 9h"))
        out = await s.run("ok")
        self.assertIn("Successfully updated the top-up plan of alice: monthly last 09:00"
                      " reset 500.00 cap 900.00/month, next 2026-11-30 09:00 UTC;"
                      " below 10.00 add 50.00 (at most 2/day)", out)
        self.assertTrue(out.endswith(PROMPT))
        fields = await self.store.plan_fields("alice")
        self.assertEqual((fields["s_every"], fields["s_day"], fields["s_mode"],
                          fields["s_amount"]), ("monthly", "31", "reset", "5000000"))
        shown = lines_of(await s.run("credit -s alice"))
        self.assertIn("plan monthly last 09:00 reset 500.00 cap 900.00/month, next"
                      " 2026-11-30 09:00 UTC; below 10.00 add 50.00 (at most 2/day)", shown)
        listed = "\n".join(lines_of(await s.run("credit -l")))
        self.assertIn("monthly last 09:00 reset 500.00", listed)
        events, _ = await self.store.events("alice", types=frozenset({"plan_set"}))
        self.assertEqual(events[0].fields["actor"], "jcli:jcliadmin")

    async def test_plan_events_show_credits(self):
        """--events and its CSV show plan_set and plan_skipped amounts in credits, as they
        show limits; plan runs' reasons are in credits too."""
        s = await self.session()
        await self.store.top_up("alice", 9_000_000, op_id="fund", actor="t")
        await s.run("credit --plan alice")
        for line in ("every daily", "at 09:00", "reset 500", "cap 900", "below 200",
                     "recharge 500"):
            await s.run(line)
        await s.run("ok")
        await self.store.run_plan("alice", "scheduled", op_id="plan:alice:s20261118",
                                  version=(await self.store.plan_fields("alice"))["version"],
                                  period="s20261118", mark=1, month="m202611")
        out = lines_of(await s.run("credit --events alice --type plan_set,plan_skipped"))
        [skipped] = [line for line in out if " plan_skipped " in line]
        self.assertIn("target=500.00 balance=900.00", skipped)
        [plan_set] = [line for line in out if " plan_set " in line]
        for shown in ("s_amount=500.00", "s_cap=900.00", "t_below=200.00", "t_amount=500.00",
                      "s_every=daily", "s_at=09:00", "t_max_per_day=1"):
            self.assertIn(shown, plan_set)
        path = self.temp_path()
        await s.run(f"credit --events alice --type plan_set --csv {path}")
        with open(path, newline="") as f:
            [row] = list(csv.DictReader(f))
        self.assertEqual((row["s_amount"], row["t_below"], row["t_max_per_day"]),
                         ("500.00", "200.00", "1"))

    async def test_edit_clear_part_and_remove(self):
        """A later session edits one key; 'threshold none' clears a part; 'none' removes."""
        s = await self.session()
        await s.run("credit -t alice 1")
        await s.run("credit --plan alice")
        for line in ("every weekly", "day mon", "at 06:30", "add 20", "below 5",
                     "recharge 10"):
            await s.run(line)
        await s.run("ok")
        await s.run("credit --plan alice")
        await s.run("add 25")
        await s.run("threshold none")
        out = await s.run("ok")
        self.assertIn("weekly mon 06:30 add 25.00, next 2026-11-23 06:30 UTC", out)
        self.assertNotIn("below", out)
        await s.run("credit --plan alice")
        await s.run("none")
        self.assertIn("Successfully removed the top-up plan of alice", await s.run("ok"))
        self.assertIn("plan -", lines_of(await s.run("credit -s alice")))
        self.assertEqual(await self.store.plan_users(), [])

    async def test_incomplete_plan_is_refused_and_ko_cancels(self):
        """ok on a schedule without a time says what is missing; ko leaves, nothing saved."""
        s = await self.session()
        self.assertEqual(lines_of(await s.run("credit --plan zed")), ["Unknown User: zed"])
        await s.run("credit -t alice 1")
        await s.run("credit --plan alice")
        await s.run("every daily")
        await s.run("add 5")
        out = await s.run("ok")
        self.assertIn("Error: the schedule needs at", out)
        self.assertTrue(out.endswith("> "))
        self.assertTrue((await s.run("ko")).endswith(PROMPT))
        self.assertEqual(await self.store.plan_fields("alice"), {})

    async def test_plan_refused_without_wallet(self):
        """credit --plan on a user without a wallet opens no session and creates nothing:
        a plan tops up a wallet, it does not start billing a user who had none."""
        s = await self.session()
        out = await s.run("credit --plan carol")
        self.assertEqual(lines_of(out), [NO_WALLET.format(uid="carol")])
        self.assertTrue(out.endswith(PROMPT))
        self.assertEqual(await self.store.wallets(), [])
        self.assertEqual(await self.store.plan_fields("carol"), {})
        self.assertEqual(lines_of(await s.run("credit -l")), ["Total wallets: 0"])

    async def test_plan_refused_when_wallet_removed_meanwhile(self):
        """ok after the wallet was removed meanwhile: refused, no wallet or plan appears."""
        s = await self.session()
        await s.run("credit -t alice 1")
        await s.run("credit --plan alice")
        for line in ("every daily", "at 06:00", "add 5"):
            await s.run(line)
        await self.store.remove("alice", "other")
        out = await s.run("ok")
        self.assertEqual(lines_of(out), [NO_WALLET.format(uid="alice")])
        self.assertEqual(await self.store.wallets(), [])
        self.assertEqual(await self.store.plan_users(), [])
        self.assertTrue((await s.run("ko")).endswith(PROMPT))
