"""Benchmark: longest-prefix lookup on a 50,000-prefix rate card.

Builds a card of random prefixes (fixed seed), then times ``RateCard.lookup`` over random
destinations with ``time.perf_counter_ns`` and compares it with a plain ``dict.get`` timed in
the same run, so the ratio means something on any machine. Always exits 0.

    PYTHONPATH=. python bench/bench_price_lookup.py [prefixes] [lookups]
"""

from __future__ import annotations

import random
import sys
import time

from jasmin_credits.ratecard import Rate, RateCard

SEED = 20240501


def build_card(rng: random.Random, size: int) -> RateCard:
    """A card of ``size`` distinct random prefixes of 1..7 digits (most 3..6 long)."""
    prefixes: set[str] = set()
    while len(prefixes) < size:
        length = rng.choice((1, 2, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 7))
        prefixes.add("".join(rng.choices("0123456789", k=length)))
    rates = tuple(Rate(p, None, None, rng.randint(500, 2500)) for p in sorted(prefixes))
    return RateCard("bench", 1000, rates)


def destinations(rng: random.Random, count: int) -> list[str]:
    """``count`` random E.164-length destinations (8..15 digits)."""
    return ["".join(rng.choices("0123456789", k=rng.randint(8, 15))) for _ in range(count)]


def time_ns(function, items) -> int:
    """Best of three passes of ``function`` over ``items``, in nanoseconds."""
    best = None
    for _ in range(3):
        start = time.perf_counter_ns()
        for item in items:
            function(item)
        elapsed = time.perf_counter_ns() - start
        best = elapsed if best is None else min(best, elapsed)
    return best


def main(argv: list[str]) -> int:
    size = int(argv[1]) if len(argv) > 1 else 50_000
    count = int(argv[2]) if len(argv) > 2 else 200_000
    rng = random.Random(SEED)
    card = build_card(rng, size)
    dests = destinations(rng, count)
    plain = {rate.prefix: rate for rate in card.entries}
    # Keys of the same shape as a hit on a 3-digit prefix, so the dict does real work.
    keys = [d[:3] for d in dests]

    lookup_ns = time_ns(card.lookup, dests)
    dict_ns = time_ns(plain.get, keys)
    matched = sum(1 for d in dests if card.lookup(d).prefix)

    per_lookup = lookup_ns / count
    per_dict = dict_ns / count
    lengths = len({len(rate.prefix) for rate in card.entries})
    print(f"card: {size} prefixes, {lengths} prefix lengths; {count} lookups")
    print(f"RateCard.lookup: {per_lookup:8.1f} ns/lookup  ({matched / count:.1%} matched a prefix)")
    print(f"plain dict.get:  {per_dict:8.1f} ns/lookup")
    print(
        f"ratio: {per_lookup / per_dict:.1f}x a plain dict lookup; budget 5000 ns/lookup: "
        f"{'within' if per_lookup < 5000 else 'OVER'}"
    )
    return 0


if __name__ == "__main__":
    main(sys.argv)
    sys.exit(0)
