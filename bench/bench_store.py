"""Reserve+commit throughput and latency of the credit store, beside raw Redis EVAL.

Starts a private redis-server, first as installed (no append-only file, Debian's default),
then with ``appendonly yes`` / ``appendfsync everysec`` (what our docs recommend for
production), and measures each from ONE Python process:

1. throughput: ``--pairs`` reserve+commit pairs with ``--concurrency`` in flight;
2. latency: pairs paced at ``--rate`` per second for ``--seconds``, p50/p99 per pair;
3. redis-benchmark, in the same run, on the same server: an EVAL of a comparable
   script (one HMGET + two HINCRBY on a hash), ``-c 50``, as the ceiling Redis offers.

Run: ``.venv/bin/python bench/bench_store.py`` (results: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import txredisapi
from twisted.internet import defer, reactor, task

from jasmin_credits.devservices import RedisServer, find_binary
from jasmin_credits.keys import Keys
from jasmin_credits.redis_client import connection_pool
from jasmin_credits.store import CreditStore

COMPARABLE_EVAL = (
    "local w = redis.call('HMGET', KEYS[1], 'b', 'r') "
    "redis.call('HINCRBY', KEYS[1], 'r', 1) return redis.call('HINCRBY', KEYS[1], 'b', 1)"
)


def redis_benchmark(port: int, requests: int) -> float:
    """Requests per second redis-benchmark reaches for COMPARABLE_EVAL."""
    binary = find_binary("redis-benchmark", "/usr/bin/redis-benchmark")
    out = subprocess.run(
        [binary, "-p", str(port), "-n", str(requests), "-c", "50", "-q",
         "EVAL", COMPARABLE_EVAL, "1", "bench:hash"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    rates = re.findall(r"([\d.]+) requests per second", out)
    return float(rates[-1])


async def pair(store: CreditStore) -> None:
    hold = await store.reserve("bench", 7, 1)
    if not hold.ok:
        raise RuntimeError(f"bench wallet refused: {hold}")
    await store.commit("bench", hold.ref)


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def server_cpu_seconds(pool: Any) -> float:
    """CPU time redis-server used so far (its main and background threads)."""
    info = await pool.execute_command("INFO", "cpu")
    fields = dict(re.findall(r"(used_cpu_(?:sys|user)):([\d.]+)", info))
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


async def evalsha_calls(pool: Any) -> int:
    """EVALSHA calls redis-server answered so far (each a batch of operations, or one)."""
    stats = await pool.execute_command("INFO", "commandstats")
    found = re.search(r"cmdstat_evalsha:calls=(\d+)", stats)
    return int(found.group(1)) if found else 0


async def throughput(store: CreditStore, pairs: int, concurrency: int) -> float:
    remaining = iter(range(pairs))

    async def worker():
        for _ in remaining:
            await pair(store)

    start = time.perf_counter()
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
    return pairs / (time.perf_counter() - start)


async def latency(store: CreditStore, rate: int, seconds: float) -> list[float]:
    """Start pairs at ``rate`` per second (catching up on late ticks) for ``seconds``."""
    samples: list[float] = []
    pending: list[defer.Deferred] = []
    total = int(rate * seconds)
    begin = time.perf_counter()

    def one():
        started = time.perf_counter()
        d = defer.Deferred.fromCoroutine(pair(store))
        d.addCallback(lambda _: samples.append(time.perf_counter() - started))
        pending.append(d)

    def tick():
        due = min(total, int((time.perf_counter() - begin) * rate) + 1)
        while len(pending) < due:
            one()
        if len(pending) >= total:
            loop.stop()

    loop = task.LoopingCall(tick)
    await loop.start(0.001)
    await defer.gatherResults(pending)
    return samples


async def measure(args, appendonly: bool) -> None:
    """One redis-server (with or without its append-only file), measured and stopped."""
    rundir = Path(tempfile.mkdtemp(prefix="jc-bench-"))
    server = RedisServer(rundir, appendonly=appendonly,
                         extra_args=tuple(args.redis_arg)).start()
    try:
        pool = await connection_pool(reactor, "127.0.0.1", server.port,
                                     poolsize=args.poolsize, lazy=False)
        store = CreditStore(pool, clock=reactor, reactor=reactor, keys=Keys("bench"))
        await store.top_up("bench", 10**15, op_id="fund", actor="bench")
        await throughput(store, 2000, args.concurrency)  # warm-up, scripts loaded
        calls = await evalsha_calls(pool)
        cpu, server_cpu = cpu_seconds(), await server_cpu_seconds(pool)
        rate = await throughput(store, args.pairs, args.concurrency)
        cpu = (cpu_seconds() - cpu) * 1e6 / args.pairs
        server_cpu = (await server_cpu_seconds(pool) - server_cpu) * 1e6 / args.pairs
        per_call = 2 * args.pairs / (await evalsha_calls(pool) - calls - 1)
        samples = await latency(store, args.rate, args.seconds)
        stats = await pool.execute_command("INFO", "commandstats")
        await pool.disconnect()
        raw = redis_benchmark(server.port, args.pairs * 2)
    finally:
        server.stop()
    qs = statistics.quantiles(samples, n=100)
    mode = ("appendonly yes, appendfsync everysec (durable: what our docs recommend)"
            if appendonly else "as installed (no append-only file: Debian's default)")
    print(f"== redis-server {mode}")
    print(f"reserve+commit pairs/s (concurrency {args.concurrency}, pool {args.poolsize}): "
          f"{rate:,.0f}  = {2 * rate:,.0f} Lua calls/s")
    print(f"CPU per pair during it: this process {cpu:.1f} us, redis-server {server_cpu:.1f} us;"
          f" {per_call:.1f} operations per EVALSHA")
    print(f"latency at {args.rate} pairs/s for {args.seconds}s ({len(samples)} pairs): "
          f"p50 {qs[49] * 1000:.2f} ms, p99 {qs[98] * 1000:.2f} ms")
    evalsha = re.search(r"cmdstat_evalsha:calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)",
                        stats)
    if evalsha:
        operations = 2 * (2000 + args.pairs + len(samples)) + 1
        print(f"inside Redis: {evalsha.group(1)} EVALSHA (batches), "
              f"{float(evalsha.group(3)):.1f} us per call, "
              f"{int(evalsha.group(2)) / operations:.1f} us per operation")
    print(f"redis-benchmark EVAL (comparable script, -c 50): {raw:,.0f} calls/s")
    print(f"ratio: our Lua calls/s / raw EVAL calls/s = {2 * rate / raw:.2f}")


async def main(args) -> None:
    hiredis = txredisapi.hiredis is not None
    print(f"reply parser: {'hiredis' if hiredis else 'pure Python'}")
    modes = {"both": (False, True), "aof": (True,), "no-aof": (False,)}[args.persistence]
    for appendonly in modes:
        await measure(args, appendonly)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--poolsize", type=int, default=8)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--redis-arg", action="append", default=[],
                        help="one more redis-server flag (repeatable)")
    parser.add_argument("--persistence", choices=("both", "aof", "no-aof"), default="both",
                        help="measure redis-server as installed, with AOF everysec, or both")
    args = parser.parse_args()
    task.react(lambda _r: defer.Deferred.fromCoroutine(main(args)))


if __name__ == "__main__":
    cli()
