"""Destination addresses as E.164 digit strings, the form rate cards are keyed by."""

from __future__ import annotations

from jasmin_credits.errors import InvalidDestination

MAX_DIGITS = 15  # ITU-T E.164

_SEPARATORS = str.maketrans("", "", "-.()")
_SHOWN = 40


def normalise(raw: bytes | str) -> str:
    """Return the E.164 digits of ``raw``: ``"+44 7911-123456"`` gives ``"447911123456"``.

    Removes surrounding and inner whitespace, dashes, dots, parentheses, and one leading
    ``+`` or ``00`` international prefix. Bytes (SMPP ``destination_addr``) are decoded as
    latin-1, which cannot fail. Raises :class:`InvalidDestination`, and nothing else, when
    what is left is empty, holds anything but ASCII digits, or is longer than 15 digits.
    """
    if isinstance(raw, bytes | bytearray):
        text = bytes(raw).decode("latin-1")
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidDestination(f"destination must be text or bytes, got {type(raw).__name__}")
    digits = "".join(text.split()).translate(_SEPARATORS)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not digits:
        raise InvalidDestination("empty destination")
    # isdigit() alone accepts '²' and non-Latin digits, which no SMSC would route.
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidDestination(f"destination {_show(text)} has non-digit characters")
    if len(digits) > MAX_DIGITS:
        raise InvalidDestination(
            f"destination has {len(digits)} digits, E.164 allows at most {MAX_DIGITS}"
        )
    return digits


def _show(text: str) -> str:
    text = text.strip()
    if len(text) > _SHOWN:
        text = text[:_SHOWN] + "..."
    return repr(text)
