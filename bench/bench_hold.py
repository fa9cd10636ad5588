"""What one hold costs a gateway at window 1, beside a bare Redis round trip.

At window 1 a client waits for every ``submit_sm_resp``, and the hold (price, parts, the
Lua ``reserve`` in Redis, the PDU tag) sits between the ``submit_sm`` and that answer. This
script measures it alone, outside Jasmin: ONE Python process, one message at a time,
against a private redis-server on loopback, in rounds that alternate

- a bare ``PING`` round trip on the same connection pool (the floor any Redis call pays);
- ``Charger.charge`` of a real Jasmin routable (a real SubmitSM to a UK mobile number,
  priced with ``config/cards/world.yaml``), what our interceptors call per message;

each with our pool's immediate writes (``redis_client.write_at_once``, the default) and
with Twisted's buffered writes (``immediate_writes=False``). It prints, per case, the
median over rounds of the wall time and the CPU time of this process per call, and the
ratios in the same run.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_hold.py`` (results: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from jasmin.routing.jasminApi import Group, User
from jasmin.routing.Routables import RoutableSubmitSm
from smpp.pdu.operations import SubmitSM
from twisted.internet import defer, reactor

from jasmin_credits.charging import Charger
from jasmin_credits.devservices import RedisServer
from jasmin_credits.keys import Keys
from jasmin_credits.pricing import Pricer
from jasmin_credits.ratecard import load_card
from jasmin_credits.redis_client import connection_pool
from jasmin_credits.store import CreditStore

CARD = Path(__file__).resolve().parent.parent / "config" / "cards" / "world.yaml"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def timed(calls: int, one: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Wall and CPU microseconds per call of ``calls`` calls made one after the other."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(calls):
        await one()
    return ((time.perf_counter() - wall) * 1e6 / calls, (cpu_seconds() - cpu) * 1e6 / calls)


class Case:
    """One pool (immediate or buffered writes) with a store and a charger on it."""

    def __init__(self, name: str, pool, pricer: Pricer):
        self.name = name
        self.pool = pool
        store = CreditStore(pool, clock=reactor, reactor=reactor, keys=Keys(f"bench{name}"))
        self.store = store
        self.charger = Charger(store, lambda: pricer)
        self.user = User("bench", Group("bench"), "bench", "pwd")
        self.samples: dict[str, list[tuple[float, float]]] = {"ping": [], "charge": []}

    async def ping(self) -> None:
        await self.pool.ping()

    async def charge(self) -> None:
        pdu = SubmitSM(source_addr=b"sender", destination_addr=b"447911123456",
                       short_message=b"hello from bench_hold", data_coding=0)
        decision = await self.charger.charge(RoutableSubmitSm(pdu, self.user))
        if not decision.charged:
            raise RuntimeError(f"bench wallet refused: {decision}")


async def main(args: argparse.Namespace) -> None:
    pricer = Pricer({"world": load_card(CARD)}, "world")
    server = RedisServer(Path(tempfile.mkdtemp(prefix="jc-bench-")), appendonly=False).start()
    try:
        cases = []
        for name, immediate in (("immediate", True), ("buffered", False)):
            pool = await connection_pool(reactor, "127.0.0.1", server.port, poolsize=2,
                                         lazy=False, immediate_writes=immediate)
            case = Case(name, pool, pricer)
            await case.store.top_up("bench", 10**15, op_id="fund", actor="bench")
            await timed(args.calls // 4, case.charge)  # warm-up: scripts loaded, caches
            cases.append(case)
        for _ in range(args.rounds):
            for case in cases:
                case.samples["ping"].append(await timed(args.calls, case.ping))
                case.samples["charge"].append(await timed(args.calls, case.charge))
        for case in cases:
            await case.pool.disconnect()
    finally:
        server.stop()

    def median(case: Case, what: str, i: int) -> float:
        return statistics.median(sample[i] for sample in case.samples[what])

    print(f"{args.rounds} rounds of {args.calls} calls, one at a time; medians per call")
    print("| writes | call | wall us | CPU us | wall vs bare PING |")
    print("|---|---|---:|---:|---:|")
    for case in cases:
        ping = median(case, "ping", 0)
        for what in ("ping", "charge"):
            wall = median(case, what, 0)
            print(f"| {case.name} | {what} | {wall:.1f} | {median(case, what, 1):.1f} | "
                  f"{wall / ping:.2f}x |")
    immediate, buffered = cases
    for what in ("ping", "charge"):
        saved = median(buffered, what, 0) - median(immediate, what, 0)
        print(f"immediate writes save {saved:.1f} us of wall time per {what} "
              f"({median(immediate, what, 0) / median(buffered, what, 0):.2f}x of buffered)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and case")
    parser.add_argument("--rounds", type=int, default=5)
    run_on_reactor(main, parser.parse_args())


def run_on_reactor(main: Callable[[argparse.Namespace], Awaitable[None]],
                   args: argparse.Namespace) -> None:
    """Run ``main(args)`` on the reactor until it ends; raise what it raised."""
    d = defer.ensureDeferred(main(args))
    failure: list = []
    d.addErrback(failure.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failure:
        failure[0].raiseException()


if __name__ == "__main__":
    cli()
