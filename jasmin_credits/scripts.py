"""Load the Lua scripts shipped in ``jasmin_credits/lua`` and run them by SHA.

Each operation file is the body of a function ``(KEYS, ARGV)``. It runs either alone
(``_lib.lua`` + the function + a call with the real KEYS and ARGV), or inside
``batch``: one EVALSHA that runs many operations one after the other and answers all
their results. Redis runs a script atomically, so each operation inside a batch is as
atomic as when it runs alone; the batch only saves round trips and, above all, the
client's per-command cost, which dominates at high rates (see docs/benchmarks.md).

Settings the hot-path operations need on every call (retentions, times to live) are
compiled into the script source as Lua constants (``constants``), rather than sent as
arguments of every call: a store with other settings simply runs scripts with another
SHA.

Calls use EVALSHA with the digest computed once; a server that lost its script cache
(restart, SCRIPT FLUSH) answers NOSCRIPT and the script is loaded again, transparently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib import resources
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

NAMES = ("reserve", "settle", "outcome", "topup", "configure", "remove", "plan_set", "plan_run",
         "lease_take", "lease_hold", "lease_link", "lease_end", "lease_shrink", "lease_epochs",
         "gateway_name")
CALLS = {"outcome": ("settle",), "lease_link": ("lease_hold", "settle")}
"""Operations that run others (``ops[name](keys, args)``) inside the same script call."""

_BATCH_LOOP = """
local results, ki, ai = {}, 1, 2
for n = 1, tonumber(ARGV[1]) do
  local name, nk, na = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  ai = ai + 3
  -- one table constructor each (sized once), not element by element (grown 5 times)
  local k, a = {unpack(KEYS, ki, ki + nk - 1)}, {unpack(ARGV, ai, ai + na - 1)}
  ki, ai = ki + nk, ai + na
  local ok, result = pcall(ops[name], k, a)
  if ok then
    results[n] = result
  else
    results[n] = {-1, tostring(result)}
  end
end
return results
"""


class RedisClient(Protocol):
    """The part of txredisapi's client that jasmin-credits uses."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred: ...


class ScriptError(Exception):
    """An operation failed inside Redis (a bug or a corrupted key, never bad input)."""


def _read(name: str) -> str:
    return resources.files("jasmin_credits").joinpath("lua").joinpath(name).read_text("utf-8")


def _prelude(constants: Mapping[str, int | str] | None) -> str:
    lines = []
    for name, value in sorted((constants or {}).items()):
        if not name.isidentifier() or not name.isupper():
            raise ValueError(f"bad Lua constant name {name!r}")
        lines.append(f"local {name} = {_lua_literal(value)}\n")
    return f"{''.join(lines)}{_read('_lib.lua')}\nlocal ops = {{}}\n"


def _lua_literal(value: int | str) -> str:
    if isinstance(value, int):
        return f"{value:d}"
    if any(c in value for c in "\\'\n\r\0"):
        raise ValueError(f"Lua string constant {value!r} holds a quote or control character")
    return f"'{value}'"


def _function(name: str) -> str:
    return f"ops['{name}'] = function(KEYS, ARGV)\n{_read(name + '.lua')}\nend\n"


class Script:
    """Lua source with its SHA, run with EVALSHA (loaded again on NOSCRIPT)."""

    def __init__(self, name: str, source: str):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    @classmethod
    def operation(cls, name: str, constants: Mapping[str, int | str] | None = None) -> Script:
        """One operation alone (with the operations it calls)."""
        functions = "".join(_function(n) for n in (*CALLS.get(name, ()), name))
        return cls(name, f"{_prelude(constants)}{functions}return ops['{name}'](KEYS, ARGV)\n")

    @classmethod
    def batch(cls, constants: Mapping[str, int | str] | None = None) -> Script:
        """Every operation, and a loop running a list of them."""
        functions = "".join(_function(name) for name in NAMES)
        return cls("batch", f"{_prelude(constants)}{functions}{_BATCH_LOOP}")

    def __call__(self, redis: RedisClient, keys: list[str], args: list[Any]) -> Deferred:
        """Run the script: EVALSHA, and on NOSCRIPT load it and run it again."""
        d = redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        d.addErrback(self._load_and_retry, redis, keys, args)
        return d

    def _load_and_retry(self, failure: Any, redis: RedisClient, keys: list[str],
                        args: list[Any]) -> Deferred:
        error = failure.value
        # txredisapi: ResponseError("NOSCRIPT ..."); redis-py: NoScriptError
        if "NOSCRIPT" not in str(error) and type(error).__name__ != "NoScriptError":
            return failure
        d = redis.execute_command("SCRIPT", "LOAD", self.source)
        d.addCallback(lambda _: redis.execute_command("EVALSHA", self.sha, len(keys), *keys,
                                                      *args))
        return d


def _fire(result: Any, d: Deferred) -> None:
    """Fire ``d`` unless its caller gave up on it already (timed out and cancelled)."""
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


class Scripts:
    """Every operation, by name: ``scripts.run("reserve", keys, args)``.

    With ``batch`` on, an operation goes to Redis at once while fewer than
    ``max_in_flight`` calls are outstanding; otherwise it waits, with the others that
    arrive meanwhile, for a reply to land, and they all go as one ``batch`` call (at most
    ``max_batch`` operations). So a quiet gateway pays no added latency, and a busy one
    sends few, large calls. Every call to Redis fails with Twisted's ``TimeoutError``
    after ``timeout`` seconds of ``clock``.

    A ``lazy`` operation (settlement's: nobody waits on it) is not sent on its own at once:
    it rides along with the next call that goes anyway (a hold's), or goes after
    ``lazy_delay`` seconds, or when ``max_batch`` of them wait. At low rates that turns the
    two or three settlement calls per message into passengers of the next hold's call:
    fewer round trips and reactor wake-ups in the gateway for the same work.
    """

    def __init__(self, redis: RedisClient, clock: IReactorTime, timeout: float,
                 batch: bool = True, max_batch: int = 32, max_in_flight: int = 2,
                 constants: Mapping[str, int | str] | None = None, lazy_delay: float = 0.005):
        self.redis = redis
        self.clock = clock
        self.timeout = timeout
        self.batching = batch
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.single = {name: Script.operation(name, constants) for name in NAMES}
        self.batch = Script.batch(constants)
        self.lazy_delay = lazy_delay
        self._pending: list[tuple[str, list[str], list[Any], Deferred]] = []
        self._lazy: list[tuple[str, list[str], list[Any], Deferred]] = []
        self._lazy_timer: Any = None
        self._in_flight = 0

    def run(self, name: str, keys: list[str], args: list[Any], lazy: bool = False) -> Deferred:
        """Run operation ``name``; the Deferred fires with its reply."""
        if not self.batching:
            return self._checked(self._send(self.single[name], keys, args))
        d = Deferred()
        if lazy:
            self._lazy.append((name, keys, args, d))
            if len(self._lazy) >= self.max_batch:
                self._send_lazy()
            elif self._lazy_timer is None:
                self._lazy_timer = self.clock.callLater(self.lazy_delay, self._send_lazy)
            return d
        self._pending.append((name, keys, args, d))
        if self._in_flight < self.max_in_flight or len(self._pending) >= self.max_batch:
            self._flush()
        return d

    def _send_lazy(self) -> None:
        """Lazy operations waited long enough (or are many): queue them like any other."""
        self._lazy_timer = None
        self._pending += self._lazy
        self._lazy = []
        if self._in_flight < self.max_in_flight or len(self._pending) >= self.max_batch:
            self._flush()

    def _take_lazy(self, room: int) -> list[tuple[str, list[str], list[Any], Deferred]]:
        """Up to ``room`` lazy operations, to ride along with a call that goes anyway."""
        taken = self._lazy[:room]
        del self._lazy[:room]
        if not self._lazy and self._lazy_timer is not None:
            if self._lazy_timer.active():
                self._lazy_timer.cancel()
            self._lazy_timer = None
        return taken

    @staticmethod
    def _checked(d: Deferred) -> Deferred:
        def check(reply: Any) -> Any:
            if isinstance(reply, list) and reply and reply[0] == -1:
                raise ScriptError(str(reply[1]))
            return reply

        return d.addCallback(check)

    def _flush(self) -> None:
        pending = self._pending[:self.max_batch]
        del self._pending[:self.max_batch]
        if not pending:
            return
        if self._lazy and len(pending) < self.max_batch:
            pending += self._take_lazy(self.max_batch - len(pending))
        self._in_flight += 1
        if len(pending) == 1:
            name, keys, args, d = pending[0]
            call = self._checked(self._send(self.single[name], keys, args))
            call.addBoth(_fire, d)
            call.addBoth(self._landed)
            return
        all_keys: list[str] = []
        all_args: list[Any] = [len(pending)]
        for name, keys, args, _ in pending:
            all_keys += keys
            all_args += [name, len(keys), len(args), *args]
        call = self._send(self.batch, all_keys, all_args)

        def deliver(replies: list[Any]) -> None:
            for (_, _, _, d), reply in zip(pending, replies, strict=True):
                if isinstance(reply, list) and reply and reply[0] == -1:
                    _fire(Failure(ScriptError(str(reply[1]))), d)
                else:
                    _fire(reply, d)

        def failed(failure: Failure) -> None:
            for *_, d in pending:
                _fire(failure, d)

        call.addCallbacks(deliver, failed)
        call.addBoth(self._landed)

    def _landed(self, _: Any) -> None:
        """A call came back (or failed): send what waited for it."""
        self._in_flight -= 1
        if self._pending:
            self._flush()

    def _send(self, script: Script, keys: list[str], args: list[Any]) -> Deferred:
        return script(self.redis, keys, args).addTimeout(self.timeout, self.clock)


