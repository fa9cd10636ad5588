"""Tests for jasmin_credits.ratecard: loading YAML cards and longest-prefix lookup."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jasmin_credits.errors import ConfigError
from jasmin_credits.ratecard import Rate, RateCard, load_card

CARDS = Path(__file__).resolve().parent.parent / "config" / "cards"
WORLD = CARDS / "world.yaml"

# Every country code ITU-T assigns (E.164 list, complement to ITU-T Rec. E.164), except
# the +1 and +7 area splits, which are checked separately.
ITU_CODES = """
1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62
63 64 65 66 81 82 84 86 90 91 92 93 94 95 98
211 212 213 216 218 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235 236 237
238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254 255 256 257 258 260 261
262 263 264 265 266 267 268 269 290 291 297 298 299
350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375 376 377 378 379 380 381 382
383 385 386 387 389 420 421 423
500 501 502 503 504 505 506 507 508 509 590 591 592 593 594 595 596 597 598 599
670 672 673 674 675 676 677 678 679 680 681 682 683 685 686 687 688 689 690 691 692
800 808 850 852 853 855 856 870 878 880 881 882 883 886 888
960 961 962 963 964 965 966 967 968 970 971 972 973 974 975 976 977 979 991 992 993 994 995
996 998
""".split()

NANP_MEMBERS = {
    "1242": "BS",
    "1246": "BB",
    "1264": "AI",
    "1268": "AG",
    "1284": "VG",
    "1340": "VI",
    "1345": "KY",
    "1441": "BM",
    "1473": "GD",
    "1649": "TC",
    "1658": "JM",
    "1664": "MS",
    "1670": "MP",
    "1671": "GU",
    "1684": "AS",
    "1721": "SX",
    "1758": "LC",
    "1767": "DM",
    "1784": "VC",
    "1787": "PR",
    "1809": "DO",
    "1829": "DO",
    "1849": "DO",
    "1868": "TT",
    "1869": "KN",
    "1876": "JM",
    "1939": "PR",
}


def write(tmp_path: Path, text: str, name: str = "card.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def card_error(tmp_path: Path, text: str) -> str:
    """Load ``text`` as a card file and return the ConfigError message."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_card(path, 4)
    return str(caught.value).replace(str(path), "CARD")


SMALL = """\
name: small
default: 1.00
entries:
  - {prefix: "44", country: GB, name: United Kingdom, price: 0.80}
  - {prefix: "447", country: GB, name: United Kingdom mobile, price: 1.20}
  - {prefix: "4479111", country: GB, name: Some operator, price: 0.0035}
  - {prefix: 33, country: FR, name: France, price: 1}
  - {prefix: "+47", country: NO, price: 0.5}
"""


@pytest.fixture
def small(tmp_path: Path) -> RateCard:
    return load_card(write(tmp_path, SMALL), 4)


# --- loading ----------------------------------------------------------------------------


def test_load_card_reads_prices_exactly(small):
    """Prices and the default become exact integer units, from the text written."""
    assert small.name == "small"
    assert small.default == 10000
    assert [r.unit_price for r in small.entries] == [8000, 12000, 35, 10000, 5000]


def test_load_card_normalises_prefixes_and_keeps_country_no(small):
    """Int and '+' prefixes become digit strings; NO stays Norway, not a YAML boolean."""
    assert [r.prefix for r in small.entries] == ["44", "447", "4479111", "33", "47"]
    assert small.entries[4] == Rate("47", "NO", None, 5000)


def test_name_defaults_to_file_stem_and_default_to_none(tmp_path):
    """Without name the card is named after its file; without default nothing else is priced."""
    card = load_card(write(tmp_path, "entries: []\n", "cheap-eu.yaml"), 4)
    assert (card.name, card.default, card.entries) == ("cheap-eu", None, ())
    assert card.lookup("44") is None


def test_prices_never_go_through_float(tmp_path):
    """A price written 0.3 is exactly 3000 units: the loader keeps the text, not a float."""
    card = load_card(write(tmp_path, "entries: [{prefix: '1', price: 0.3}]\n"), 4)
    assert card.entries[0].unit_price == 3000


def test_from_mapping_refuses_a_float_price():
    """A float handed to from_mapping (e.g. by a plain YAML loader) is refused, not rounded."""
    with pytest.raises(ConfigError) as caught:
        RateCard.from_mapping({"entries": [{"prefix": "1", "price": 0.3}]}, "api", 4)
    assert str(caught.value) == (
        "api: entries[0].price: must be written as decimal text or an integer, not a float, got 0.3"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "entries:\n  - prefix: '44'\n    price: 0.1\n    price: 0.2\n",
            "CARD: line 4, column 5: malformed YAML: found duplicate key 'price'",
        ),
        (
            "entries:\n  - {prefix: '44', price: -1}\n",
            "CARD: entries[0].price: must not be negative, got '-1'",
        ),
        (
            "entries:\n  - {prefix: '44', price: 0.1}\n  - {prefix: '45', price: cheap}\n",
            "CARD: entries[1].price: must be a decimal number such as '12' or '0.8', got 'cheap'",
        ),
        (
            "entries:\n  - {prefix: '44', price: 0.12345}\n",
            "CARD: entries[0].price: has 5 decimals, at most 4 allowed, got '0.12345'",
        ),
        (
            "entries:\n  - {prefix: '44', price: 1e-3}\n",
            "CARD: entries[0].price: must be a decimal number such as '12' or '0.8', got '1e-3'",
        ),
        (
            "entries:\n  - {prefix: '44', price: .nan}\n",
            "CARD: entries[0].price: must be a decimal number such as '12' or '0.8', got '.nan'",
        ),
        (
            "entries:\n  - {prefix: '44', price: true}\n",
            "CARD: entries[0].price: must be a number written as text or an integer, got bool True",
        ),
        (
            "entries:\n  - {prefix: '44', price: 0.1}\n  - {prefix: '447', price: 0.1}\n"
            "  - {prefix: '+44', price: 0.2}\n",
            "CARD: entries[2].prefix: duplicate prefix '44', already used by entries[0]",
        ),
        (
            "entries:\n  - {prefix: 44, price: 0.1}\n  - {prefix: '44', price: 0.2}\n",
            "CARD: entries[1].prefix: duplicate prefix '44', already used by entries[0]",
        ),
        (
            "entries:\n  - {prefix: '44a', price: 0.1}\n",
            "CARD: entries[0].prefix: must be 1 to 15 digits, got '44a'",
        ),
        (
            "entries:\n  - {prefix: '', price: 0.1}\n",
            "CARD: entries[0].prefix: must be 1 to 15 digits, got ''",
        ),
        (
            "entries:\n  - {prefix: '1234567890123456', price: 0.1}\n",
            "CARD: entries[0].prefix: must be 1 to 15 digits, got '1234567890123456'",
        ),
        (
            "entries:\n  - {prefix: [4, 4], price: 0.1}\n",
            "CARD: entries[0].prefix: must be 1 to 15 digits, got ['4', '4']",
        ),
        (
            "entries:\n  - {prefix: '44', country: gb, price: 0.1}\n",
            "CARD: entries[0].country: must be an ISO 3166 alpha-2 code (two upper-case"
            " letters), got 'gb'",
        ),
        (
            "entries:\n  - {prefix: '44', country: GBR, price: 0.1}\n",
            "CARD: entries[0].country: must be an ISO 3166 alpha-2 code (two upper-case"
            " letters), got 'GBR'",
        ),
        (
            "entries:\n  - {prefix: '44', name: [a], price: 0.1}\n",
            "CARD: entries[0].name: must be text, got ['a']",
        ),
        ("entries:\n  - {prefix: '44'}\n", "CARD: entries[0].price: is required"),
        ("entries:\n  - {price: 0.1}\n", "CARD: entries[0].prefix: is required"),
        (
            "entries:\n  - {prefix: '44', price: 0.1, cost: 2}\n",
            "CARD: entries[0].cost: unknown key; expected one of: prefix, country, name, price",
        ),
        ("entries:\n  - 44\n", "CARD: entries[0]: must be a mapping, got str"),
        (
            "defualt: 1\nentries: []\n",
            "CARD: defualt: unknown key; expected one of: name, default, entries",
        ),
        ("default: -2\nentries: []\n", "CARD: default: must not be negative, got '-2'"),
        ("name: ''\nentries: []\n", "CARD: name: must be a non-empty text, got ''"),
        ("name: world\n", "CARD: entries: must be a list of entries, got nothing"),
        ("entries: {prefix: '44'}\n", "CARD: entries: must be a list of entries, got dict"),
        ("", "CARD: must be a mapping with an 'entries' list, got nothing"),
        ("- 44\n", "CARD: must be a mapping with an 'entries' list, got list"),
    ],
)
def test_card_errors_name_file_key_and_problem(tmp_path, text, message):
    """Every mistake in a card file is one ConfigError naming the file, the key and the problem."""
    assert card_error(tmp_path, text) == message


def test_malformed_yaml_names_file_and_line(tmp_path):
    """Broken YAML is a ConfigError naming the file, line and column of the problem."""
    message = card_error(
        tmp_path, "entries:\n  - {prefix: '44', price: 0.1\n  - {prefix: '45', price: 0.1}\n"
    )
    # libyaml and the pure-Python parser word the problem differently
    assert message.startswith("CARD: line 3, column 5: malformed YAML: ")
    assert "expected ',' or '}'" in message


def test_missing_file_is_a_config_error(tmp_path):
    """An unreadable card file is a ConfigError naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read the file: ")):
        load_card(path, 4)


def test_constructor_refuses_duplicate_prefixes():
    """RateCard built in code refuses duplicate prefixes too."""
    with pytest.raises(ValueError, match="duplicate prefix '44'"):
        RateCard("x", None, (Rate("44", "GB", None, 1), Rate("44", "GB", None, 2)))


# --- lookup -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "prefix"),
    [
        ("441234567890", "44"),
        ("447700900123", "447"),
        ("447911123456", "4479111"),
        ("4479111", "4479111"),
        ("447911", "447"),
        ("44", "44"),
        ("33612345678", "33"),
        ("4712345678", "47"),
    ],
)
def test_lookup_takes_the_longest_prefix(small, digits, prefix):
    """The longest matching prefix wins: 44 < 447 < 4479111."""
    assert small.lookup(digits).prefix == prefix


def test_lookup_falls_back_to_default(small):
    """Unmatched destinations get the default rate, with prefix '' and no country."""
    assert small.lookup("12125550100") == Rate("", None, None, 10000)
    assert small.lookup("4") == Rate("", None, None, 10000)


@given(
    prefixes=st.sets(st.from_regex(r"[0-9]{1,6}", fullmatch=True), max_size=40),
    digits=st.from_regex(r"[0-9]{1,15}", fullmatch=True),
)
def test_lookup_matches_brute_force(prefixes, digits):
    """lookup agrees with scanning every prefix for the longest match."""
    card = RateCard("h", None, tuple(Rate(p, None, None, len(p)) for p in prefixes))
    matches = [p for p in prefixes if digits.startswith(p)]
    expected = max(matches, key=len) if matches else None
    found = card.lookup(digits)
    assert (found.prefix if found else None) == expected


# --- the shipped cards ------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> RateCard:
    return load_card(WORLD, 4)


def test_world_card_loads_with_many_unique_entries(world):
    """The world card loads, has more than 200 entries, and no prefix twice."""
    assert world.name == "world"
    assert len(world.entries) > 200
    prefixes = [r.prefix for r in world.entries]
    assert len(prefixes) == len(set(prefixes))


def test_world_card_lists_every_itu_country_code(world):
    """Every ITU-assigned country calling code has its own entry."""
    prefixes = {r.prefix for r in world.entries}
    assert [code for code in ITU_CODES if code not in prefixes] == []


def test_world_card_covers_the_nanp(world):
    """+1 is the United States, and each NANP member has its area code(s) priced apart."""
    assert world.lookup("12125550100").country == "US"
    assert world.lookup("14165550100").country == "CA"
    for prefix, country in NANP_MEMBERS.items():
        rate = world.lookup(prefix + "5550100")
        assert (rate.prefix, rate.country) == (prefix, country)


@pytest.mark.parametrize(
    ("digits", "country"),
    [
        ("447911123456", "GB"),
        ("33612345678", "FR"),
        ("4915112345678", "DE"),
        ("393331234567", "IT"),
        ("34612345678", "ES"),
        ("31612345678", "NL"),
        ("4712345678", "NO"),
        ("79161234567", "RU"),
        ("77011234567", "KZ"),
        ("76111", "KZ"),
        ("8613800138000", "CN"),
        ("819012345678", "JP"),
        ("919812345678", "IN"),
        ("6281234567890", "ID"),
        ("5511912345678", "BR"),
        ("5215512345678", "MX"),
        ("2348031234567", "NG"),
        ("27821234567", "ZA"),
        ("201001234567", "EG"),
        ("254712345678", "KE"),
        ("61412345678", "AU"),
        ("6421123456", "NZ"),
        ("971501234567", "AE"),
        ("966501234567", "SA"),
        ("905321234567", "TR"),
        ("380501234567", "UA"),
        ("998901234567", "UZ"),
        ("3831234567", "XK"),
        ("2626391234", "YT"),
        ("5999123456", "CW"),
        ("35818123456", "AX"),
        ("441534123456", "JE"),
        ("2901234", "SH"),
    ],
)
def test_world_card_sample_countries(world, digits, country):
    """A sample of numbers is priced under the right country."""
    assert world.lookup(digits).country == country


@pytest.mark.parametrize("code", ["800", "808", "870", "878", "881", "882", "883", "888", "979"])
def test_world_card_international_services_have_no_country(world, code):
    """Shared and international-service codes are priced with no country."""
    rate = world.lookup(code + "1234567")
    assert (rate.prefix, rate.country) == (code, None)


def test_world_card_prices_are_plausible(world):
    """Every world price is between 0.05 and 0.25 credits, and unassigned codes are refused."""
    assert all(500 <= r.unit_price <= 2500 for r in world.entries)
    assert world.default is None
    assert world.lookup("999123456") is None


def test_premium_card_has_a_default(tmp_path):
    """The premium card loads and prices unmatched destinations at its default."""
    card = load_card(CARDS / "premium.yaml", 4)
    assert card.name == "premium"
    assert card.lookup("447911123456").prefix == "447"
    assert card.lookup("9991234") == Rate("", None, None, 3000)
