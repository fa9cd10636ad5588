"""The ``price`` jCli command, driven through a StringTransport against a real Redis."""

from __future__ import annotations

from jasmin_credits.errors import ConfigError

from .test_jcli_credit import PROMPT, JCliTestCase, lines_of


class PriceListShowTests(JCliTestCase):
    async def test_list_cards(self):
        """price -l: each card with its entry count, default price and assignments."""
        s = await self.session()
        await s.run("price -a world --user alice")
        out = lines_of(await s.run("price -l"))
        self.assertEqual(out[0].split(), ["#Card", "Entries", "Default", "price", "Assigned",
                                          "to"])
        rows = {line.split()[0]: line for line in out[1:-1]}
        self.assertEqual(rows["#world"].split(), ["#world", "3", "1.00", "default;", "users",
                                                  "alice"])
        self.assertEqual(rows["#gold"].split(), ["#gold", "1", "none", "groups", "vip"])
        self.assertEqual(rows["#big"].split(), ["#big", "45", "none", "-"])
        self.assertEqual(out[-1], "Total rate cards: 3")

    async def test_show_card_paged(self):
        """price -s pages a card's entries by prefix, 30 a page, and says how to go on."""
        s = await self.session()
        out = lines_of(await s.run("price -s big"))
        self.assertEqual(out[:2], ["card big", "default_price none"])
        rows = [line for line in out if line.startswith("#1")]
        self.assertEqual(len(rows), 30)
        self.assertEqual(rows[0].split(), ["#1000", "US", "Area", "0", "0.01"])
        self.assertEqual(out[-2:], ["Entries 1-30 of 45", "More entries: price -s big --page 2"])
        out = lines_of(await s.run("price -s big --page 2"))
        self.assertEqual(len([line for line in out if line.startswith("#1")]), 15)
        self.assertEqual(out[-1], "Entries 31-45 of 45")
        out = lines_of(await s.run("price -s big --page 3"))
        self.assertEqual(out[-1], "No entries on page 3 (45 entries)")

    async def test_show_world(self):
        """price -s world shows prefixes, countries, names and unit prices with precision."""
        s = await self.session()
        out = lines_of(await s.run("price -s world"))
        self.assertIn("default_price 1.00", out)
        self.assertIn("#447    GB      United Kingdom mobile       1.20", out)

    async def test_unknown_card_and_bad_page(self):
        """An unknown card or a bad page number answers one line."""
        s = await self.session()
        self.assertEqual(lines_of(await s.run("price -s nope")),
                         ["Unknown rate card: nope (cards: big, gold, world)"])
        self.assertEqual(len(lines_of(await s.run("price -s world --page 0"))), 1)
        self.assertEqual(len(lines_of(await s.run("price"))), 1)
        self.assertEqual(len(lines_of(await s.run("price -q alice"))), 1)


class PriceQuoteTests(JCliTestCase):
    async def test_quote_and_would_accept(self):
        """price -q prices text for the user's card and says if the wallet accepts it now."""
        s = await self.session()
        out = lines_of(await s.run("price -q alice +447700900123 Hello there"))
        self.assertEqual(out, [
            "destination 447700900123",
            "country GB United Kingdom mobile",
            "prefix 447",
            "card world",
            "encoding gsm7",
            "parts 1",
            "unit_price 1.20",
            "total 1.20",
            "would_accept no: no_wallet",
        ])
        await s.run("credit -t alice 5")
        out = lines_of(await s.run("price -q alice 447700900123 " + "x" * 200))
        self.assertIn("parts 2", out)
        self.assertIn("total 2.40", out)
        self.assertEqual(out[-1], "would_accept yes")

    async def test_quote_default_price_and_group_card(self):
        """The card's default price shows no prefix; bob's group card gold prices him."""
        s = await self.session()
        out = lines_of(await s.run("price -q alice 4915112345678"))
        self.assertIn("prefix - (the card's default price)", out)
        self.assertIn("unit_price 1.00", out)
        out = lines_of(await s.run("price -q bob 447700900123 hi"))
        self.assertIn("card gold", out)
        self.assertIn("unit_price 0.50", out)

    async def test_quote_errors(self):
        """Bad destination, unpriced destination and unknown user each answer one line."""
        s = await self.session()
        out = lines_of(await s.run("price -q alice 12ab34 hi"))
        self.assertEqual(len(out), 1)
        self.assertTrue(out[0].startswith("Error: "), out)
        out = lines_of(await s.run("price -q bob 33612345678 hi"))
        self.assertEqual(len(out), 1)
        self.assertIn("not priced by card 'gold'", out[0])
        self.assertEqual(lines_of(await s.run("price -q zed 447700900123")),
                         ["Unknown User: zed"])


class PriceReloadAssignTests(JCliTestCase):
    async def test_reload(self):
        """price --reload answers the cards read."""
        s = await self.session()
        out = lines_of(await s.run("price --reload"))
        self.assertEqual(out, ["Rate cards reloaded: world (3 entries), gold (1 entries),"
                               " big (45 entries)"])
        self.assertEqual(self.runtime.reloads, 1)

    async def test_reload_broken_file_keeps_cards(self):
        """A broken card file answers its error line; the cards in force stay."""
        s = await self.session()
        self.runtime.reload_error = ConfigError("cards/world.yaml", "entries[2].price",
                                                "must be >= 0, got '-1'")
        out = lines_of(await s.run("price --reload"))
        self.assertEqual(out, ["Error: cards/world.yaml: entries[2].price: must be >= 0,"
                               " got '-1' (the cards in force stay)"])
        self.assertIn("card world", await s.run("price -q alice 447700900123"))

    async def test_assign_user_and_remove(self):
        """price -a CARD --user assigns (quotes follow it); -a none removes the assignment."""
        s = await self.session()
        out = lines_of(await s.run("price -a gold --user alice"))
        self.assertEqual(out, ["Successfully assigned rate card gold to user alice"])
        self.assertEqual(self.runtime.card_assignments()["user"], {"alice": "gold"})
        self.assertIn("card gold", await s.run("price -q alice 447700900123"))
        self.assertIn("rate_card gold", await s.run("credit -t alice 1") and
                      await s.run("credit -s alice"))
        out = lines_of(await s.run("price -a none --user alice"))
        self.assertEqual(out, ["Successfully removed the rate card assignment of user alice"])
        self.assertEqual(self.runtime.card_assignments()["user"], {})

    async def test_unassign_when_nothing_assigned(self):
        """-a none on a user or group without an assignment says nothing was assigned."""
        s = await self.session()
        self.assertEqual(lines_of(await s.run("price -a none --user alice")),
                         ["Nothing to remove: no rate card is assigned to user alice"])
        self.assertEqual(lines_of(await s.run("price -a none --group customers")),
                         ["Nothing to remove: no rate card is assigned to group customers"])
        self.assertEqual(self.runtime.card_assignments(),
                         {"user": {}, "group": {"vip": "gold"}})
        self.assertEqual(lines_of(await s.run("price -a none --group vip")),
                         ["Successfully removed the rate card assignment of group vip"])

    async def test_assign_group(self):
        """price -a CARD --group assigns the card to a Jasmin group."""
        s = await self.session()
        out = lines_of(await s.run("price -a gold --group customers"))
        self.assertEqual(out, ["Successfully assigned rate card gold to group customers"])
        self.assertIn("card gold", await s.run("price -q carol 447700900123"))

    async def test_assign_errors(self):
        """Unknown card, user or group, or neither/both targets: one line, nothing changes."""
        s = await self.session()
        for line, expected in (
            ("price -a nope --user alice", "Unknown rate card: nope (cards: big, gold, world)"),
            ("price -a gold --user zed", "Unknown User: zed"),
            ("price -a gold --group nobody", "Unknown Group: nobody"),
            ("price -a gold", "Error: price -a CARD needs --user UID or --group GID"),
            ("price -a gold --user alice --group vip",
             "Error: price -a CARD needs --user UID or --group GID"),
        ):
            out = await s.run(line)
            self.assertEqual(lines_of(out), [expected], line)
            self.assertTrue(out.endswith(PROMPT))
        self.assertEqual(self.runtime.card_assignments(),
                         {"user": {}, "group": {"vip": "gold"}})

    async def test_conflicting_and_stray_options_are_refused(self):
        """price: two actions or an option the action does not take answer one line."""
        s = await self.session()
        usage = "; type 'help price' for usage"
        for line, expected in (
            ("price -l -s world", "-l/--list and -s/--show cannot be used together"),
            ("price -l --page 2", "-l/--list does not take --page"),
            ("price -s world --user alice", "-s/--show does not take --user"),
            ("price -a gold --user alice --page 2", "-a/--assign does not take --page"),
            ("price --reload now", "--reload takes nothing more, got 'now'"),
        ):
            out = await s.run(line)
            self.assertEqual(lines_of(out), [f"Error: price: {expected}{usage}"], line)
        self.assertEqual(self.runtime.card_assignments(),
                         {"user": {}, "group": {"vip": "gold"}})
        self.assertEqual(self.runtime.reloads, 0)

    async def test_help_price(self):
        """help price explains every option."""
        s = await self.session()
        out = await s.run("help price")
        for option in ("--list", "--show", "--page", "--quote", "--reload", "--assign",
                       "--user", "--group", "price -a none --user alice"):
            self.assertIn(option, out)
