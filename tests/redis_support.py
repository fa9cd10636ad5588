"""Connections to the test session's redis-server (see conftest.py)."""

from __future__ import annotations

import os
import uuid

import txredisapi
from twisted.internet import reactor
from twisted.internet.task import Clock

from jasmin_credits.keys import Keys
from jasmin_credits.store import CreditStore, StoreSettings


async def connect(test) -> txredisapi.ConnectionHandler:
    """A txredisapi connection for one trial test, closed when the test ends."""
    port = int(os.environ["JC_TEST_REDIS_PORT"])
    conn = await txredisapi.Connection("127.0.0.1", port, reconnect=False,
                                       convertNumbers=False)
    test.addCleanup(conn.disconnect)
    return conn


def unique_keys() -> Keys:
    """A key prefix no other test uses."""
    return Keys(f"t{uuid.uuid4().hex[:10]}")


async def make_store(test, clock: Clock | None = None,
                     settings: StoreSettings | None = None) -> CreditStore:
    """A CreditStore on the test Redis with its own prefix and a fake clock."""
    conn = await connect(test)
    if clock is None:
        clock = Clock()
        clock.advance(1_795_000_000)  # 2026-11-18, a Wednesday
    return CreditStore(conn, clock=clock, reactor=reactor, keys=unique_keys(),
                       settings=settings)
