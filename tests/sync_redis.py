"""A synchronous path to the real test redis-server, for SynchronousTestCase tests.

``SyncRedis`` wraps redis-py (a blocking client) in the one method the store uses,
returning already-fired Deferreds, so a CreditStore coroutine completes at once and
``successResultOf`` reads its result. Same server, same Lua scripts: only the client
differs from production (txredisapi), and test_store.py runs the same operations there.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import redis
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from jasmin_credits.store import CreditStore, StoreSettings

from .redis_support import unique_keys


class SyncRedis:
    def __init__(self, client: redis.Redis):
        self.client = client

    def execute_command(self, *args: Any) -> Deferred:
        try:
            return succeed(self.client.execute_command(*args))
        except Exception as error:
            return fail(error)


def sync_client() -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=int(os.environ["JC_TEST_REDIS_PORT"]),
                       decode_responses=True)


def sync_store(clock: Clock, settings: StoreSettings | None = None,
               client: redis.Redis | None = None) -> CreditStore:
    """A CreditStore on the test Redis whose calls complete synchronously."""
    settings = replace(settings or StoreSettings(), batch=False)
    return CreditStore(SyncRedis(client or sync_client()), clock=clock, reactor=clock,
                       keys=unique_keys(), settings=settings)
