"""Waiting for a condition in trial tests, by polling it on the reactor (never sleeping)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def eventually(check: Callable[[], Any], timeout: float = 30.0,
                     what: str = "condition", interval: float = 0.05) -> Any:
    """Poll ``check`` (a function, or one answering an awaitable) until it answers truthy;
    answer that, or fail at the deadline naming ``what``."""
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await deferLater(reactor, interval, lambda: None)
