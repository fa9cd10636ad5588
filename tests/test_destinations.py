"""Tests for jasmin_credits.destinations: E.164 normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jasmin_credits.destinations import normalise
from jasmin_credits.errors import InvalidDestination


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("+44 7911-123456", "447911123456"),
        ("0044 7911 123456", "447911123456"),
        (b"447911123456", "447911123456"),
        ("  +1 (242) 555.0199\t", "12425550199"),
        ("+ 33 6 12 34 56 78", "33612345678"),
        ("12", "12"),
        ("0612345678", "0612345678"),
        ("123456789012345", "123456789012345"),
        (bytearray(b"+49-151"), "49151"),
    ],
)
def test_normalise_keeps_only_the_e164_digits(raw, digits):
    """Separators, whitespace and one '+' or '00' prefix go; the digits stay."""
    assert normalise(raw) == digits


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty destination"),
        ("   ", "empty destination"),
        (b"", "empty destination"),
        ("+", "empty destination"),
        ("00", "empty destination"),
        ("- ( ) .", "empty destination"),
        ("12ab", "destination '12ab' has non-digit characters"),
        ("44+7911", "destination '44+7911' has non-digit characters"),
        ("++44", "destination '++44' has non-digit characters"),
        ("4²", "destination '4²' has non-digit characters"),
        ("٤٤٧٩", "destination '٤٤٧٩' has non-digit characters"),
        (b"44\xff", "destination '44ÿ' has non-digit characters"),
        ("1234567890123456", "destination has 16 digits, E.164 allows at most 15"),
        ("+00441234567890123", "destination has 17 digits, E.164 allows at most 15"),
        (None, "destination must be text or bytes, got NoneType"),
        (4479, "destination must be text or bytes, got int"),
    ],
)
def test_normalise_refuses_with_a_reason(raw, message):
    """Empty, non-digit, too long or non-text destinations raise InvalidDestination saying why."""
    with pytest.raises(InvalidDestination) as caught:
        normalise(raw)
    assert str(caught.value) == message


def test_normalise_truncates_long_garbage_in_the_message():
    """A huge bad destination is cut in the error message, so logs stay readable."""
    with pytest.raises(InvalidDestination) as caught:
        normalise("x" * 10_000)
    assert len(str(caught.value)) < 100


@given(st.binary(max_size=64))
def test_normalise_never_raises_anything_else_on_bytes(raw):
    """Any bytes give 1..15 ASCII digits or InvalidDestination, never another exception."""
    try:
        digits = normalise(raw)
    except InvalidDestination:
        return
    assert 1 <= len(digits) <= 15
    assert digits.isascii() and digits.isdigit()


@given(st.text(max_size=64))
def test_normalise_never_raises_anything_else_on_text(raw):
    """Any text gives 1..15 ASCII digits or InvalidDestination, never another exception."""
    try:
        digits = normalise(raw)
    except InvalidDestination:
        return
    assert 1 <= len(digits) <= 15
    assert digits.isascii() and digits.isdigit()


@given(st.from_regex(r"[1-9][0-9]{0,14}", fullmatch=True))
def test_normalise_is_idempotent_on_digits(digits):
    """Plain E.164 digits, with or without '+', come back unchanged."""
    assert normalise(digits) == digits
    assert normalise("+" + digits) == digits
