"""Exact credit amounts: integers of a minor unit.

``10 ** decimals`` units make one credit (4 decimals by default, so ``12000`` is ``1.2``
credits). Amounts are never floats: operators write them as decimal text and we turn them
into integers here, once, so that Redis only ever adds and subtracts integers.
"""

from __future__ import annotations

import re
from decimal import Decimal

from jasmin_credits.errors import InvalidAmount

DEFAULT_DECIMALS = 4

# Redis INCRBY works on signed 64-bit integers, so a wallet cannot hold more than this.
MAX_UNITS = 2**63 - 1

_NUMBER = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+))?")


def parse_amount(
    value: int | str | Decimal,
    decimals: int = DEFAULT_DECIMALS,
    *,
    field: str = "amount",
    allow_negative: bool = False,
) -> int:
    """Turn ``value`` (int, decimal text such as ``"0.8"`` or ``"-25"``, or Decimal) into units.

    Floats are refused: they are not exact, and a YAML or JSON loader that produced one has
    already lost the digits the operator wrote. Also refused: bools, NaN and infinities,
    exponents, more decimals than ``decimals``, negatives unless ``allow_negative``, and
    magnitudes beyond a signed 64-bit integer. The :class:`InvalidAmount` raised names
    ``field`` and the bad value, and carries them as ``.field`` and ``.problem``.
    """
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        kind = type(value).__name__
        if isinstance(value, float):
            problem = f"must be written as decimal text or an integer, not a float, got {value!r}"
        else:
            problem = f"must be a number written as text or an integer, got {kind} {value!r}"
        raise _invalid(field, problem)
    if isinstance(value, int):
        units = value * 10**decimals
    else:
        units = _parse_text(value, decimals, field)
    if units < 0 and not allow_negative:
        raise _invalid(field, f"must not be negative, got {_show(value)}")
    if abs(units) > MAX_UNITS:
        raise _invalid(field, f"is too large, got {_show(value)}")
    return units


def format_amount(
    units: int, decimals: int = DEFAULT_DECIMALS, display_decimals: int | None = None
) -> str:
    """Render ``units`` as decimal text: ``format_amount(12000, 4) == "1.2000"``.

    ``display_decimals`` drops trailing zero digits down to that many decimals, never a
    non-zero one: with 2, ``12000`` shows as ``"1.20"`` but ``35`` still as ``"0.0035"``.
    """
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**decimals)
    if decimals == 0:
        return f"{sign}{whole}"
    digits = str(frac).rjust(decimals, "0")
    if display_decimals is not None and display_decimals < decimals:
        keep = max(display_decimals, len(digits.rstrip("0")))
        digits = digits[:keep]
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def _parse_text(value: str | Decimal, decimals: int, field: str) -> int:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _invalid(field, f"must be a finite number, got '{value}'")
        text = format(value, "f")
    else:
        text = value.strip()
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise _invalid(field, f"must be a decimal number such as '12' or '0.8', got {value!r}")
    sign, whole, frac = match.groups()
    frac = (frac or "").rstrip("0")
    if len(frac) > decimals:
        raise _invalid(
            field, f"has {len(frac)} decimals, at most {decimals} allowed, got {_show(value)}"
        )
    if len(whole.lstrip("0")) > 19:
        raise _invalid(field, f"is too large, got {_show(value)}")
    units = int(whole) * 10**decimals + int(frac.ljust(decimals, "0") or "0")
    return -units if sign == "-" else units


def _show(value: object) -> str:
    return f"'{value}'"


def _invalid(field: str, problem: str) -> InvalidAmount:
    error = InvalidAmount(f"{field}: {problem}")
    error.field, error.problem = field, problem
    return error
