"""Quotes: which card prices a user's message, at what unit price, for how many parts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from jasmin_credits.destinations import normalise
from jasmin_credits.errors import ConfigError, NotPriced
from jasmin_credits.parts import Parts, count_text
from jasmin_credits.ratecard import RateCard


@dataclass(frozen=True)
class Quote:
    """The price of one message. ``unit_price`` and ``total`` are integer credit units.

    ``prefix`` is ``""`` (and ``country`` and ``name`` None) when the card's default
    price applied.
    """

    destination: str
    country: str | None
    prefix: str
    name: str | None
    card: str
    encoding: str
    parts: int
    unit_price: int
    total: int


class Pricer:
    """Prices messages with the card assigned to the user, else the group, else the default.

    Immutable: reloading the configuration builds a new Pricer. Raises :class:`ConfigError`
    when an assignment names a card that is not in ``cards``; ``source`` names the
    configuration in that message.
    """

    def __init__(
        self,
        cards: Mapping[str, RateCard],
        default_card: str | None,
        user_cards: Mapping[str, str] | None = None,
        group_cards: Mapping[str, str] | None = None,
        *,
        source: str = "pricing",
    ):
        self._cards = MappingProxyType(dict(cards))
        self._user_cards = MappingProxyType(dict(user_cards or {}))
        self._group_cards = MappingProxyType(dict(group_cards or {}))
        self._default_card = default_card
        self._check(source, "default_card", {"": default_card} if default_card else {})
        self._check(source, "user_cards", self._user_cards)
        self._check(source, "group_cards", self._group_cards)

    @property
    def cards(self) -> Mapping[str, RateCard]:
        """The cards by name (read-only)."""
        return self._cards

    def card_for(self, uid: str | None, gid: str | None) -> RateCard | None:
        """The card that prices messages of user ``uid`` in group ``gid``, or None."""
        name = self._user_cards.get(uid) if uid is not None else None
        if name is None and gid is not None:
            name = self._group_cards.get(gid)
        if name is None:
            name = self._default_card
        return None if name is None else self._cards[name]

    def quote(
        self, uid: str | None, gid: str | None, destination: bytes | str, parts: Parts
    ) -> Quote:
        """Price ``parts`` to ``destination`` for user ``uid`` in group ``gid``.

        Raises :class:`InvalidDestination` when the destination is not an E.164 number,
        and :class:`NotPriced` when no card applies or the card neither matches the
        destination nor has a default price.
        """
        digits = normalise(destination)
        card = self.card_for(uid, gid)
        if card is None:
            raise NotPriced(
                f"destination '{digits}' is not priced: no rate card for user {uid!r}"
                f" (group {gid!r}) and no default card"
            )
        rate = card.lookup(digits)
        if rate is None:
            raise NotPriced(
                f"destination '{digits}' is not priced by card '{card.name}':"
                " no prefix matches and the card has no default price"
            )
        return Quote(
            destination=digits,
            country=rate.country,
            prefix=rate.prefix,
            name=rate.name,
            card=card.name,
            encoding=parts.encoding,
            parts=parts.parts,
            unit_price=rate.unit_price,
            total=rate.unit_price * parts.parts,
        )

    def quote_text(
        self, uid: str | None, gid: str | None, destination: bytes | str, text: str
    ) -> Quote:
        """Price ``text`` to ``destination``, counting its parts with :func:`count_text`."""
        return self.quote(uid, gid, destination, count_text(text))

    def _check(self, source: str, key: str, assigned: Mapping[str, str]) -> None:
        for who, name in assigned.items():
            if name not in self._cards:
                known = ", ".join(sorted(self._cards)) or "none"
                path = f"{key}.{who}" if who else key
                raise ConfigError(source, path, f"unknown card {name!r}; known cards: {known}")
