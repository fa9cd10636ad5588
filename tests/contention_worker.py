"""One process of the contention test: many concurrent holds on one wallet.

Usage: python -m tests.contention_worker PORT PREFIX UID COUNT CONCURRENCY SEED
Prints one JSON line: {"committed": credits charged, "accepted": n, "refused": n}.
"""

from __future__ import annotations

import json
import random
import sys

import txredisapi
from twisted.internet import defer, reactor, task

from jasmin_credits.keys import Keys
from jasmin_credits.store import CreditStore


async def main(port, prefix, uid, count, concurrency, seed):
    rng = random.Random(seed)
    redis = await txredisapi.ConnectionPool("127.0.0.1", port, poolsize=concurrency,
                                            convertNumbers=False)
    store = CreditStore(redis, clock=reactor, reactor=reactor, keys=Keys(prefix))
    totals = {"committed": 0, "accepted": 0, "refused": 0}
    jobs = iter(range(count))

    async def one(i):
        unit, parts = rng.randint(1, 50), rng.randint(1, 3)
        hold = await store.reserve(uid, unit, parts)
        if not hold.ok:
            totals["refused"] += 1
            return
        totals["accepted"] += 1
        msgid = f"{seed}-{i}"
        await store.link(uid, hold.ref, msgid, parts)
        sent = rng.random() < 0.8
        done = await store.settle_message(msgid, sent, "" if sent else "ESME_RSUBMITFAIL")
        totals["committed"] -= done.changed

    async def worker():
        for i in jobs:
            await one(i)

    await defer.gatherResults([defer.Deferred.fromCoroutine(worker())
                               for _ in range(concurrency)])
    await redis.disconnect()
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    port, prefix, uid, count, concurrency, seed = sys.argv[1:7]
    task.react(lambda _r: defer.Deferred.fromCoroutine(
        main(int(port), prefix, uid, int(count), int(concurrency), int(seed))))
