"""Rate cards: a price per SMS part for each destination prefix, looked up by longest match.

A card is a YAML file::

    name: world            # optional, defaults to the file stem
    default: 1.00          # optional price for unmatched destinations; omit or null to refuse
    entries:
      - {prefix: "44", country: GB, name: United Kingdom, price: 0.80}
      - {prefix: "447", country: GB, name: United Kingdom mobile, price: 1.20}

Prices are read as the text the operator wrote and turned into integer units by
:func:`jasmin_credits.money.parse_amount`; they never pass through a float.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jasmin_credits.errors import ConfigError, InvalidAmount
from jasmin_credits.money import DEFAULT_DECIMALS, parse_amount

_PREFIX = re.compile(r"[0-9]{1,15}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_CARD_KEYS = ("name", "default", "entries")
_ENTRY_KEYS = ("prefix", "country", "name", "price")


@dataclass(frozen=True)
class Rate:
    """The price of one SMS part to destinations starting with ``prefix``.

    The default rate of a card has prefix ``""`` and no country or name.
    """

    prefix: str
    country: str | None
    name: str | None
    unit_price: int


@dataclass(frozen=True)
class RateCard:
    """A named set of rates, with an optional default price for unmatched destinations.

    Raises ``ValueError`` on duplicate prefixes; :meth:`from_mapping` reports those (and
    every other mistake in a card file) as :class:`ConfigError` first.
    """

    name: str
    default: int | None
    entries: tuple[Rate, ...]
    # (prefix length, {prefix: rate}), longest length first
    _index: tuple[tuple[int, dict[str, Rate]], ...] = field(init=False, repr=False, compare=False)
    _default_rate: Rate | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_length: dict[int, dict[str, Rate]] = {}
        for rate in self.entries:
            table = by_length.setdefault(len(rate.prefix), {})
            if rate.prefix in table:
                raise ValueError(f"rate card {self.name!r}: duplicate prefix {rate.prefix!r}")
            table[rate.prefix] = rate
        index = tuple(sorted(by_length.items(), reverse=True))
        default = None if self.default is None else Rate("", None, None, self.default)
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_default_rate", default)

    def lookup(self, digits: str) -> Rate | None:
        """The rate of the longest prefix of ``digits``, else the default rate, else None.

        ``digits`` is a normalised destination (see :func:`jasmin_credits.destinations.normalise`).
        """
        # A length beyond len(digits) slices to digits itself, which no key of that length
        # equals, so no length check is needed in this hot loop.
        for length, table in self._index:
            rate = table.get(digits[:length])
            if rate is not None:
                return rate
        return self._default_rate

    @classmethod
    def from_mapping(cls, data: Any, source: str, decimals: int = DEFAULT_DECIMALS) -> RateCard:
        """Build a card from parsed YAML; ``source`` names the file in error messages.

        Numbers must arrive as text (see :func:`load_card`); a float price is refused.
        Raises :class:`ConfigError` naming ``source``, the key and the problem.
        """
        source = str(source)
        if not isinstance(data, Mapping):
            raise ConfigError(
                source, "", f"must be a mapping with an 'entries' list, got {_kind(data)}"
            )
        _check_keys(data, _CARD_KEYS, source, "")
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(source, "name", f"must be a non-empty text, got {name!r}")
        default = data.get("default")
        if default is not None:
            default = _price(default, decimals, source, "default")
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise ConfigError(source, "entries", f"must be a list of entries, got {_kind(entries)}")
        rates = _rates(entries, decimals, source)
        return cls(name.strip(), default, tuple(rates))


def load_card(path: str | Path, decimals: int = DEFAULT_DECIMALS) -> RateCard:
    """Read a YAML rate card. Raises :class:`ConfigError` naming the file (and line) on error."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc}") from None
    try:
        data = yaml.load(text, Loader=CardLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, where, f"malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"malformed YAML: {exc}") from None
    return RateCard.from_mapping(data, source, decimals)


# libyaml's parser when PyYAML was built with it: about 4x faster on a 50,000-entry card.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CardLoader(_SafeLoader):
    """A SafeLoader that keeps numbers as the text written, so no price becomes a float.

    Only ``true``/``false`` are booleans (YAML 1.2), so ``country: NO`` stays Norway, and a
    key repeated in one mapping is an error instead of silently keeping the last value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _number_as_text(loader: CardLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


CardLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
    ]
    for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
}
CardLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
CardLoader.add_constructor("tag:yaml.org,2002:int", _number_as_text)
CardLoader.add_constructor("tag:yaml.org,2002:float", _number_as_text)


def _rates(entries: Iterable[Any], decimals: int, source: str) -> list[Rate]:
    rates: list[Rate] = []
    first_use: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"entries[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(source, where, f"must be a mapping, got {_kind(entry)}")
        _check_keys(entry, _ENTRY_KEYS, source, where)
        for required in ("prefix", "price"):
            if entry.get(required) is None:
                raise ConfigError(source, f"{where}.{required}", "is required")
        prefix = _prefix(entry["prefix"], source, f"{where}.prefix")
        if prefix in first_use:
            raise ConfigError(
                source,
                f"{where}.prefix",
                f"duplicate prefix '{prefix}', already used by entries[{first_use[prefix]}]",
            )
        first_use[prefix] = i
        country = entry.get("country")
        if country is not None and not (isinstance(country, str) and _COUNTRY.fullmatch(country)):
            raise ConfigError(
                source,
                f"{where}.country",
                f"must be an ISO 3166 alpha-2 code (two upper-case letters), got {country!r}",
            )
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(source, f"{where}.name", f"must be text, got {name!r}")
        price = _price(entry["price"], decimals, source, f"{where}.price")
        rates.append(Rate(prefix, country, name, price))
    return rates


def _prefix(value: Any, source: str, key: str) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str):
        digits = text.strip().removeprefix("+")
        if _PREFIX.fullmatch(digits):
            return digits
    raise ConfigError(source, key, f"must be 1 to 15 digits, got {value!r}")


def _price(value: Any, decimals: int, source: str, key: str) -> int:
    try:
        return parse_amount(value, decimals, field=key)
    except InvalidAmount as exc:
        raise ConfigError(source, key, getattr(exc, "problem", str(exc))) from None


def _check_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in data:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(source, path, f"unknown key; expected one of: {', '.join(allowed)}")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
