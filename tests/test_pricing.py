"""Tests for jasmin_credits.pricing: card assignment and quotes."""

from __future__ import annotations

import dataclasses

import pytest

from jasmin_credits.errors import ConfigError, InvalidDestination, NotPriced
from jasmin_credits.parts import GSM7, UCS2, Parts
from jasmin_credits.pricing import Pricer, Quote
from jasmin_credits.ratecard import Rate, RateCard

WORLD = RateCard(
    "world",
    None,
    (
        Rate("44", "GB", "United Kingdom", 600),
        Rate("447", "GB", "United Kingdom mobile", 500),
        Rate("33", "FR", "France", 800),
    ),
)
PREMIUM = RateCard("premium", 3000, (Rate("44", "GB", "United Kingdom", 900),))
LOCAL = RateCard("local", None, (Rate("33", "FR", "France", 100),))


@pytest.fixture
def pricer() -> Pricer:
    return Pricer(
        {"world": WORLD, "premium": PREMIUM, "local": LOCAL},
        "world",
        user_cards={"alice": "local"},
        group_cards={"resellers": "premium"},
    )


def test_card_for_user_beats_group_beats_default(pricer):
    """A user's own card wins over the group's, which wins over the default card."""
    assert pricer.card_for("alice", "resellers") is LOCAL
    assert pricer.card_for("bob", "resellers") is PREMIUM
    assert pricer.card_for("bob", "customers") is WORLD
    assert pricer.card_for(None, None) is WORLD


def test_card_for_without_default_is_none():
    """With no default card, an unassigned user has no card."""
    assert Pricer({"world": WORLD}, None).card_for("bob", "g") is None


def test_quote_prices_parts_by_longest_prefix(pricer):
    """A quote names destination, country, prefix and card, and multiplies the unit price."""
    quote = pricer.quote("bob", "customers", "+44 7911-123456", Parts(GSM7, 3))
    assert quote == Quote(
        destination="447911123456",
        country="GB",
        prefix="447",
        name="United Kingdom mobile",
        card="world",
        encoding=GSM7,
        parts=3,
        unit_price=500,
        total=1500,
    )


def test_quote_uses_the_group_card_and_its_default(pricer):
    """A reseller's unmatched destination is priced at the premium card's default."""
    quote = pricer.quote("bob", "resellers", b"0049151234567", Parts(UCS2, 2))
    assert (quote.card, quote.prefix, quote.country, quote.unit_price, quote.total) == (
        "premium",
        "",
        None,
        3000,
        6000,
    )


def test_quote_refuses_unpriced_destination(pricer):
    """No matching prefix and no default price raises NotPriced naming destination and card."""
    with pytest.raises(NotPriced) as caught:
        pricer.quote("alice", None, "+44 20 7946 0000", Parts(GSM7, 1))
    assert str(caught.value) == (
        "destination '442079460000' is not priced by card 'local':"
        " no prefix matches and the card has no default price"
    )


def test_quote_refuses_when_no_card_applies():
    """A user with no card and no default card gets NotPriced."""
    pricer = Pricer({"world": WORLD}, None)
    with pytest.raises(NotPriced) as caught:
        pricer.quote("bob", "g", "447911123456", Parts(GSM7, 1))
    assert str(caught.value) == (
        "destination '447911123456' is not priced: no rate card for user 'bob' (group 'g')"
        " and no default card"
    )


def test_quote_refuses_invalid_destination(pricer):
    """A destination that is not E.164 raises InvalidDestination before any lookup."""
    with pytest.raises(InvalidDestination, match="destination 'abc' has non-digit characters"):
        pricer.quote("bob", None, "abc", Parts(GSM7, 1))


def test_quote_text_counts_the_parts(pricer):
    """quote_text counts the text's parts: 161 GSM characters are 2 parts."""
    quote = pricer.quote_text("bob", None, "33612345678", "a" * 161)
    assert (quote.encoding, quote.parts, quote.total) == (GSM7, 2, 1600)
    quote = pricer.quote_text("bob", None, "33612345678", "Привет")
    assert (quote.encoding, quote.parts, quote.total) == (UCS2, 1, 800)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"default_card": "nope"},
            "pricing: default_card: unknown card 'nope'; known cards: world",
        ),
        (
            {"default_card": "world", "user_cards": {"alice": "gold"}},
            "pricing: user_cards.alice: unknown card 'gold'; known cards: world",
        ),
        (
            {"default_card": None, "group_cards": {"vip": "gold"}},
            "pricing: group_cards.vip: unknown card 'gold'; known cards: world",
        ),
    ],
)
def test_pricer_refuses_unknown_card_names(kwargs, message):
    """Assigning a card that does not exist is a ConfigError naming the assignment."""
    with pytest.raises(ConfigError) as caught:
        Pricer({"world": WORLD}, **kwargs)
    assert str(caught.value) == message


def test_pricer_does_not_follow_later_changes_to_its_inputs():
    """The Pricer copies its mappings: a reload must build a new Pricer."""
    cards = {"world": WORLD}
    users = {"alice": "world"}
    pricer = Pricer(cards, None, user_cards=users)
    users["alice"] = "other"
    cards.clear()
    assert pricer.card_for("alice", None) is WORLD
    with pytest.raises(TypeError):
        pricer.cards["x"] = WORLD  # type: ignore[index]


def test_quote_is_frozen(pricer):
    """Quotes are immutable values."""
    quote = pricer.quote("bob", None, "447911123456", Parts(GSM7, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        quote.total = 0  # type: ignore[misc]
