"""The ``price`` jCli command: rate cards, quotes, reloading and assigning cards."""

from __future__ import annotations

from typing import Any

from jasmin_credits.errors import ConfigError

from ._common import AsyncManager, CommandError, check_uid_line, page_number, table

PAGE_SIZE = 30


class PriceManager(AsyncManager):
    """Logic of the ``price`` command.

    Card files are configuration (re-read with ``price --reload``); assignments made here
    live in Redis, so ``persist``/``load`` have nothing to do for them.
    """

    managerName = "price"

    def send_lines(self, lines: list[str]) -> None:
        self._send_lines(lines)

    # -- price -l -----------------------------------------------------------------------

    def list(self, arg: str, opts: Any) -> None:
        cards = self.runtime.pricer.cards
        if not cards:
            return self.send_lines(["Total rate cards: 0"])
        default = self.runtime.pricer.card_for(None, None)
        assigned = self.runtime.card_assignments()
        rows = []
        for name in sorted(cards):
            card = cards[name]
            who = []
            if default is not None and default.name == name:
                who.append("default")
            users = sorted(u for u, c in assigned.get("user", {}).items() if c == name)
            groups = sorted(g for g, c in assigned.get("group", {}).items() if c == name)
            if users:
                who.append("users " + ",".join(users))
            if groups:
                who.append("groups " + ",".join(groups))
            rows.append([name, str(len(card.entries)), self.amount(card.default, "none"),
                         "; ".join(who) or "-"])
        lines = table(["Card", "Entries", "Default price", "Assigned to"], rows, right=(1, 2))
        lines.append(f"Total rate cards: {len(cards)}")
        self.send_lines(lines)

    # -- price -s -----------------------------------------------------------------------

    def show(self, arg: str, opts: Any) -> None:
        card = self._card(opts.show)
        page = page_number(opts.page)
        entries = sorted(card.entries, key=lambda r: r.prefix)
        shown = entries[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
        lines = [f"card {card.name}", f"default_price {self.amount(card.default, 'none')}"]
        if not shown:
            lines.append(f"No entries on page {page} ({len(entries)} entries)")
            return self.send_lines(lines)
        rows = [[r.prefix, r.country or "-", r.name or "-", self.amount(r.unit_price)]
                for r in shown]
        lines += table(["Prefix", "Country", "Name", "Unit price"], rows, right=(3,))
        first = (page - 1) * PAGE_SIZE + 1
        lines.append(f"Entries {first}-{first + len(shown) - 1} of {len(entries)}")
        if page * PAGE_SIZE < len(entries):
            lines.append(f"More entries: price -s {card.name} --page {page + 1}")
        self.send_lines(lines)

    def _card(self, name: str) -> Any:
        card = self.runtime.pricer.cards.get(name)
        if card is None:
            known = ", ".join(sorted(self.runtime.pricer.cards)) or "none"
            raise CommandError(f"Unknown rate card: {name} (cards: {known})")
        return card

    # -- price -q -----------------------------------------------------------------------

    def quote(self, arg: str, opts: Any) -> None:
        uid, destination = opts.quote
        user = self.require_user(uid)
        gid = None if user.group is None else str(user.group.gid)
        quote = self.runtime.pricer.quote_text(uid, gid, destination, arg)
        self.answer(lambda: self._quote(uid, gid, quote))

    async def _quote(self, uid: str, gid: str | None, quote: Any) -> list[str]:
        verdict = await self.runtime.would_accept(uid, gid, quote)
        country = " ".join(x for x in (quote.country, quote.name) if x) or "-"
        prefix = quote.prefix or "- (the card's default price)"
        return [
            f"destination {quote.destination}",
            f"country {country}",
            f"prefix {prefix}",
            f"card {quote.card}",
            f"encoding {quote.encoding}",
            f"parts {quote.parts}",
            f"unit_price {self.amount(quote.unit_price)}",
            f"total {self.amount(quote.total)}",
            f"would_accept {verdict}",
        ]

    # -- price --reload -----------------------------------------------------------------

    def reload(self, arg: str, opts: Any) -> None:
        self.answer(self._reload)

    async def _reload(self) -> str:
        try:
            summary = await self.runtime.reload_cards()
        except ConfigError as error:
            raise CommandError(f"Error: {error} (the cards in force stay)") from None
        return f"Rate cards reloaded: {summary or 'no cards'}"

    # -- price -a -----------------------------------------------------------------------

    def assign(self, arg: str, opts: Any) -> None:
        if (opts.user is None) == (opts.group is None):
            raise CommandError("Error: price -a CARD needs --user UID or --group GID")
        card = None if opts.assign.lower() == "none" else opts.assign
        if card is not None:
            self._card(card)
        if opts.user is not None:
            kind, ident = "user", check_uid_line(opts.user)
            self.require_user(ident)
        else:
            kind, ident = "group", opts.group
            if self.router.getGroup(ident) is None:
                raise CommandError(f"Unknown Group: {ident}")
        self.answer(lambda: self._assign(kind, ident, card))

    async def _assign(self, kind: str, ident: str, card: str | None) -> str:
        if card is None and ident not in self.runtime.card_assignments().get(kind, {}):
            return f"Nothing to remove: no rate card is assigned to {kind} {ident}"
        await self.runtime.assign_card(kind, ident, card)
        if card is None:
            return f"Successfully removed the rate card assignment of {kind} {ident}"
        return f"Successfully assigned rate card {card} to {kind} {ident}"
