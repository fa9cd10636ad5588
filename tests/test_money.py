"""Tests for jasmin_credits.money: exact amounts as integer units."""

from __future__ import annotations

from decimal import Decimal

import pytest

from jasmin_credits.errors import InvalidAmount
from jasmin_credits.money import MAX_UNITS, format_amount, parse_amount


@pytest.mark.parametrize(
    ("value", "units"),
    [
        ("0.8", 8000),
        ("12", 120000),
        ("1.2345", 12345),
        ("0.0035", 35),
        (" 3.5 ", 35000),
        ("+2", 20000),
        ("1.20000", 12000),
        ("007", 70000),
        (5, 50000),
        (0, 0),
        (Decimal("0.80"), 8000),
        (Decimal("1E+2"), 1000000),
    ],
)
def test_parse_amount_accepts_exact_numbers(value, units):
    """Ints, decimal text and Decimals become units of 10**-4 credit, exactly."""
    assert parse_amount(value, 4) == units


def test_parse_amount_uses_the_configured_decimals():
    """The unit follows ``decimals``: 2 decimals make cents."""
    assert parse_amount("1.25", 2) == 125
    assert parse_amount("7", 0) == 7


def test_parse_amount_negative_only_when_allowed():
    """Negative amounts parse with allow_negative=True and are refused otherwise."""
    assert parse_amount("-25", 4, allow_negative=True) == -250000
    with pytest.raises(InvalidAmount, match=r"^amount: must not be negative, got '-25'$"):
        parse_amount("-25", 4)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.8, "credit: must be written as decimal text or an integer, not a float, got 0.8"),
        (True, "credit: must be a number written as text or an integer, got bool True"),
        (None, "credit: must be a number written as text or an integer, got NoneType None"),
        ("NaN", "credit: must be a decimal number such as '12' or '0.8', got 'NaN'"),
        ("inf", "credit: must be a decimal number such as '12' or '0.8', got 'inf'"),
        ("1e3", "credit: must be a decimal number such as '12' or '0.8', got '1e3'"),
        ("12abc", "credit: must be a decimal number such as '12' or '0.8', got '12abc'"),
        ("", "credit: must be a decimal number such as '12' or '0.8', got ''"),
        ("1_000", "credit: must be a decimal number such as '12' or '0.8', got '1_000'"),
        ("١٢", "credit: must be a decimal number such as '12' or '0.8', got '١٢'"),
        ("1.23456", "credit: has 5 decimals, at most 4 allowed, got '1.23456'"),
        (Decimal("NaN"), "credit: must be a finite number, got 'NaN'"),
        (Decimal("Infinity"), "credit: must be a finite number, got 'Infinity'"),
        (Decimal("0.00001"), "credit: has 5 decimals, at most 4 allowed, got '0.00001'"),
    ],
)
def test_parse_amount_refuses_inexact_or_garbage(value, message):
    """Floats, bools, NaN/inf, exponents, garbage and excess decimals raise a named error."""
    with pytest.raises(InvalidAmount) as caught:
        parse_amount(value, 4, field="credit")
    assert str(caught.value) == message


def test_parse_amount_error_carries_field_and_problem():
    """InvalidAmount exposes .field and .problem so callers can re-word the message."""
    with pytest.raises(InvalidAmount) as caught:
        parse_amount("-1", 4, field="price")
    assert (caught.value.field, caught.value.problem) == ("price", "must not be negative, got '-1'")


def test_parse_amount_refuses_more_than_redis_can_hold():
    """Amounts beyond a signed 64-bit integer of units are refused, not wrapped."""
    assert parse_amount(str(MAX_UNITS // 10**4), 4) <= MAX_UNITS
    with pytest.raises(InvalidAmount, match="is too large"):
        parse_amount("1000000000000000", 4)
    with pytest.raises(InvalidAmount, match="is too large"):
        parse_amount("9" * 5000, 4)


@pytest.mark.parametrize(
    ("units", "decimals", "display", "text"),
    [
        (12000, 4, None, "1.2000"),
        (12000, 4, 2, "1.20"),
        (35, 4, 2, "0.0035"),
        (12345, 4, 2, "1.2345"),
        (12300, 4, 2, "1.23"),
        (10000, 4, 0, "1"),
        (0, 4, None, "0.0000"),
        (-35, 4, None, "-0.0035"),
        (-250000, 4, 2, "-25.00"),
        (7, 0, None, "7"),
    ],
)
def test_format_amount(units, decimals, display, text):
    """format_amount renders units, trimming only zero digits down to display_decimals."""
    assert format_amount(units, decimals, display) == text


@pytest.mark.parametrize("text", ["0.0000", "1.2345", "-25.0000", "99999.9999"])
def test_format_then_parse_round_trips(text):
    """Formatting the parsed value gives back the canonical text."""
    assert format_amount(parse_amount(text, 4, allow_negative=True), 4) == text
