"""Load the Lua scripts shipped in ``jasmin_credits/lua`` and run them by SHA.

Each script is ``_lib.lua`` followed by the operation's own file. Calls use EVALSHA with
the digest computed once; a server that lost its script cache (restart, SCRIPT FLUSH)
answers NOSCRIPT and the script is loaded again, transparently.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any, Protocol

from twisted.internet.defer import Deferred


class RedisClient(Protocol):
    """The part of txredisapi's client that jasmin-credits uses."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred: ...


def _read(name: str) -> str:
    return resources.files("jasmin_credits").joinpath("lua").joinpath(name).read_text("utf-8")


class Script:
    """One Lua operation, ready to run on a client."""

    def __init__(self, name: str):
        self.name = name
        self.source = _read("_lib.lua") + "\n" + _read(f"{name}.lua")
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    async def __call__(self, redis: RedisClient, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except Exception as error:
            # txredisapi: ResponseError("NOSCRIPT ..."); redis-py: NoScriptError
            if "NOSCRIPT" not in str(error) and type(error).__name__ != "NoScriptError":
                raise
        await redis.execute_command("SCRIPT", "LOAD", self.source)
        return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


class Scripts:
    """Every operation script, by name: ``scripts.reserve(redis, keys, args)``."""

    NAMES = ("reserve", "settle", "outcome", "topup", "configure", "remove")

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, Script(name))
