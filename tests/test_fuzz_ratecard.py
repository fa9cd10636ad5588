"""Hypothesis fuzzing of rate card files: any file loads or fails with ConfigError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from jasmin_credits.errors import ConfigError
from jasmin_credits.ratecard import RateCard, load_card

scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10)
           | st.sampled_from(["33", "+44", "0.05", "1e3", "0x1F", "-1", "", " 7 ", "١٢"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
entry = st.dictionaries(st.sampled_from(["prefix", "country", "name", "price", "extra"]),
                        scalars, max_size=5)
cards = st.fixed_dictionaries({}, optional={
    "name": scalars, "default": scalars, "entries": st.lists(entry, max_size=5) | values,
    "currency": values})


def _load(text: str) -> RateCard:
    with tempfile.TemporaryDirectory(prefix="jc-fuzz-card-") as directory:
        path = Path(directory) / "card.yaml"
        path.write_text(text, encoding="utf-8")
        return load_card(path, 4)


def _check(text: str) -> None:
    try:
        card = _load(text)
    except ConfigError as error:
        assert "card.yaml" in str(error)
    else:
        assert isinstance(card, RateCard)
        for rate in card.entries:
            assert isinstance(rate.unit_price, int) and rate.unit_price >= 0


@settings(max_examples=300, deadline=None)
@given(cards)
def test_fuzzed_card_documents_load_or_fail_with_config_error(data):
    """Any card-shaped YAML document loads with integer prices or raises ConfigError."""
    _check(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_card_text_loads_or_fails_with_config_error(text):
    """Arbitrary text as a card file never raises anything but ConfigError."""
    _check(text)
