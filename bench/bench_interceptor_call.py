"""What one ``run_script`` call costs the drop-in interceptord, beside stock Jasmin's.

jasmind asks the interceptord about every MT message over PB: ``run_script(script,
pickled routable)``. This script times that call alone, in ONE process, with no network:

- ``stock``: Jasmin's own ``InterceptorPB.perspective_run_script`` with a no-op script
  (what configuration (2) of ``bench_gateway.py`` runs), logging to a file as it does;
- ``ours``: ``jasmin-credits-interceptord``'s avatar, same script, then charging: priced
  (``config/cards/world.yaml``), held on a credit lease taken beforehand from a private
  redis-server (the default: no Redis call per message), tagged, pickled back;
- ``pickling``: ``pickle.loads`` then ``pickle.dumps`` of the routable, which both pay.

The calls are interleaved round by round; it prints medians and the ratios of each round's.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_interceptor_call.py`` (results:
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
from pathlib import Path

from bench_body_read import interleaved_us
from bench_hold import CARD, run_on_reactor
from jasmin.interceptor.configs import InterceptorPBConfig
from jasmin.interceptor.interceptor import InterceptorPB
from jasmin.routing.jasminApi import Group, User
from jasmin.routing.Routables import RoutableSubmitSm
from smpp.pdu.operations import SubmitSM
from twisted.internet import reactor

from jasmin_credits.charging import Charger
from jasmin_credits.config import parse_config
from jasmin_credits.devservices import RedisServer
from jasmin_credits.interceptors.interceptord import ChargingInterceptorPB
from jasmin_credits.keys import Keys
from jasmin_credits.leasing import LeaseBook
from jasmin_credits.pricing import Pricer
from jasmin_credits.ratecard import load_card
from jasmin_credits.redis_client import connection_pool
from jasmin_credits.store import CreditStore

SCRIPT = "smpp_status = None"
"""A no-op interceptor script, as in bench_gateway.py's configuration (2)."""


class _Runtime:
    """What the avatar reads of a CreditsRuntime: its charger and config."""

    def __init__(self, charger: Charger):
        self.charger = charger
        self.config = parse_config({"charging": {"mode": "interceptor-pb"}}, "bench.yaml")


async def main(args: argparse.Namespace) -> None:
    rundir = Path(tempfile.mkdtemp(prefix="jc-bench-"))
    server = RedisServer(rundir, appendonly=False).start()
    try:
        pool = await connection_pool(reactor, "127.0.0.1", server.port, poolsize=2, lazy=False)
        store = CreditStore(pool, clock=reactor, reactor=reactor, keys=Keys("benchcall"))
        await store.top_up("bench", 10**15, op_id="fund", actor="bench")
        pricer = Pricer({"world": load_card(CARD)}, "world")
        # a lease large enough for every call of the run
        leases = LeaseBook(store, reactor, lambda uid, lease_id: None, messages=10**7,
                           seconds=3600, idle=3600)
        charger = Charger(store, lambda: pricer, leases=leases)
        config = InterceptorPBConfig(None)
        config.log_file = str(rundir / "interceptor.log")
        ours = ChargingInterceptorPB(config, _Runtime(charger))
        stock = InterceptorPB(config)
        routable = RoutableSubmitSm(
            SubmitSM(source_addr=b"sender", destination_addr=b"447911123456",
                     short_message=b"hello from bench_interceptor_call", data_coding=0),
            User("bench", Group("bench"), "bench", "pwd"))
        body = pickle.dumps(routable, pickle.HIGHEST_PROTOCOL)
        leases.ask("bench", 10**6)
        await leases.requests()
        answered = ours.perspective_run_script(SCRIPT, body)
        if not (answered.called and isinstance(answered.result, bytes)):
            raise RuntimeError(f"the lease did not answer at once: {answered!r}")

        times = interleaved_us({
            "pickling": lambda: pickle.dumps(pickle.loads(body), pickle.HIGHEST_PROTOCOL),
            "stock": lambda: stock.perspective_run_script(SCRIPT, body),
            "ours": lambda: ours.perspective_run_script(SCRIPT, body),
        }, args.number, args.rounds)
        held = leases.held
        await pool.disconnect()
    finally:
        server.stop()

    def ratio(name: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))

    print(f"{args.rounds} interleaved rounds of {args.number} calls; medians; ratios: the "
          f"median of each round's ({held:,} messages held on the lease)")
    print("| call | µs per call | vs stock | vs pickling |")
    print("|---|---:|---:|---:|")
    for name in ("pickling", "stock", "ours"):
        print(f"| {name} | {statistics.median(times[name]):.1f} | {ratio(name, 'stock'):.2f}x "
              f"| {ratio(name, 'pickling'):.2f}x |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=3000)
    run_on_reactor(main, parser.parse_args())


if __name__ == "__main__":
    cli()
