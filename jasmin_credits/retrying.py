"""Store calls Jasmin must not wait for, run in the background and retried while Redis is away.

:class:`BackgroundRetry` is the machinery the launcher's in-process settlement steps share
(``settlement.link: queueing``): :class:`~jasmin_credits.linking.QueueingLinker` links holds
as Jasmin queues their messages and :class:`~jasmin_credits.observing.OutcomeObserver`
settles the SMSC's answers as Jasmin publishes them. Each call starts at once, Jasmin never
waits for it, and no failure reaches Jasmin:

- :class:`~jasmin_credits.errors.StoreUnavailable`: retried with doubling delays
  (``initial_delay`` up to ``max_delay``) for at most ``give_up_after`` seconds, while at most
  ``max_waiting`` calls wait (a call over that bound is tried once). A warning says how many
  wait, at most every ``warn_every`` seconds;
- a ``ValueError`` (malformed input: retrying cannot help): given up at once;
- any other error (a bug, a reply that does not look like one): logged with its traceback
  and tried again ``unexpected_delay`` seconds later, up to ``unexpected_attempts`` attempts
  in all, as settlement's consumer does with the events it reads (money is at stake: a
  passing fault must not lose the call, and a call that always fails must end).

A call given up is counted (``given_up`` and the ``on_give_up`` hook, for metrics) and its
``give_up(why)`` callback says what that means for the books. In memory, not durable: calls
not finished when the process dies are lost. :meth:`BackgroundRetry.stop` tries every
waiting call once more.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .errors import StoreUnavailable


def _nothing() -> None:
    pass


class BackgroundRetry:
    """Runs store calls in the background, retrying them while Redis is unavailable.

    :meth:`run` starts one call and returns at once; it never raises. ``clock`` times the
    retries; ``on_retry`` and ``on_give_up`` are called at each retry and each call given up
    (metrics). ``done`` and ``given_up`` count what happened (for tests and logs). Subclasses
    name what they run in ``what`` (for the warning) and may log on their own ``log``.
    """

    what = "store call"
    log = logging.getLogger("jasmin-credits")

    def __init__(
        self,
        *,
        clock: IReactorTime,
        give_up_after: float = 21_600.0,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        max_waiting: int = 100_000,
        warn_every: float = 10.0,
        on_retry: Callable[[], None] = _nothing,
        on_give_up: Callable[[], None] = _nothing,
        unexpected_attempts: int = 5,
        unexpected_delay: float = 5.0,
    ):
        if not 0 < initial_delay <= max_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        if unexpected_attempts < 1 or unexpected_delay < 0:
            raise ValueError("need unexpected_attempts >= 1 and unexpected_delay >= 0")
        self.unexpected_attempts = unexpected_attempts
        self.unexpected_delay = unexpected_delay
        self.clock = clock
        self.give_up_after = give_up_after
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.max_waiting = max_waiting
        self.warn_every = warn_every
        self.on_retry = on_retry
        self.on_give_up = on_give_up
        self.done = 0
        self.given_up = 0
        self._pending: set[Deferred] = set()
        self._sleeping: dict[Deferred, IDelayedCall] = {}
        self._stopping = False
        self._last_warning: float | None = None

    @property
    def waiting(self) -> int:
        """Calls waiting for their next attempt."""
        return len(self._sleeping)

    @property
    def pending(self) -> int:
        """Calls not finished yet (in flight or waiting)."""
        return len(self._pending)

    def run(self, attempt: Callable[[], Awaitable[Any]], label: str,
            give_up: Callable[[str], None]) -> None:
        """Call ``attempt()`` now, and again after each StoreUnavailable within the bounds.

        ``label`` names the call in logs (``"link of message <id>"``); ``give_up(why)`` runs
        once if the call is given up, to log what that means.
        """
        retry = not self._stopping and len(self._sleeping) < self.max_waiting
        d = Deferred.fromCoroutine(self._attempts(attempt, label, give_up, retry))
        if not d.called:
            self._pending.add(d)
            d.addBoth(self._finished, d)
        d.addErrback(self._unexpected, label)

    async def _attempts(self, attempt: Callable[[], Awaitable[Any]], label: str,
                        give_up: Callable[[str], None], retry: bool) -> None:
        started = self.clock.seconds()
        delay = self.initial_delay
        attempts = unexpected = 0
        while True:
            attempts += 1
            try:
                await attempt()
            except StoreUnavailable as error:
                waited = self.clock.seconds() - started
                if not retry or self._stopping or waited + delay > self.give_up_after:
                    self._give_up(give_up, f"credit store unavailable after {attempts} "
                                           f"attempt(s): {error}")
                    return
                self.on_retry()
                self._warn(error)
                await self._sleep(delay)
                delay = min(delay * 2, self.max_delay)
            except ValueError as error:  # malformed input: retrying cannot help
                self._give_up(give_up, f"malformed: {error}")
                return
            except Exception as error:  # noqa: BLE001 - retried a few times, never raised
                unexpected += 1
                if not retry or self._stopping or unexpected >= self.unexpected_attempts:
                    self.log.exception("%s failed (attempt %d)", label, attempts)
                    self._give_up(give_up, f"{type(error).__name__}: {error}")
                    return
                self.log.exception("%s failed (attempt %d of %d): tried again in %gs",
                                   label, unexpected, self.unexpected_attempts,
                                   self.unexpected_delay)
                self.on_retry()
                await self._sleep(self.unexpected_delay)
            else:
                self.done += 1
                if attempts > 1:
                    self.log.debug("%s done after %d attempts", label, attempts)
                return

    def _give_up(self, give_up: Callable[[str], None], why: str) -> None:
        self.given_up += 1
        self.on_give_up()
        give_up(why)

    def _warn(self, error: Exception) -> None:
        now = self.clock.seconds()
        if self._last_warning is None or now - self._last_warning >= self.warn_every:
            self._last_warning = now
            self.log.warning("credit store unavailable (%s): %d %s(s) waiting to retry",
                             error, len(self._sleeping) + 1, self.what)

    def _sleep(self, delay: float) -> Deferred:
        d: Deferred = Deferred()
        self._sleeping[d] = self.clock.callLater(delay, self._wake, d)
        return d

    def _wake(self, d: Deferred) -> None:
        call = self._sleeping.pop(d, None)
        if call is not None and call.active():
            call.cancel()
        d.callback(None)

    def _finished(self, result: Any, d: Deferred) -> Any:
        self._pending.discard(d)
        return result

    def _unexpected(self, failure: Any, label: str) -> None:
        self._give_up(lambda why: self.log.error("%s failed: %s", label, why),
                      failure.getTraceback())

    def failed_before_run(self, message: str) -> None:
        """Log the exception being handled (ours, in a step before :meth:`run`: Jasmin must
        not see it) with ``message``, and count it with ``on_give_up``. Never raises."""
        self.log.exception(message)
        try:
            self.on_give_up()
        except Exception:  # noqa: BLE001 - nothing more to do
            pass

    def stop(self) -> Deferred:
        """Try every waiting call once more, now; fire when no call is in flight.

        Bounded by the store's call timeout. Calls started from now on are tried once.
        """
        self._stopping = True
        for d in list(self._sleeping):
            self._wake(d)
        if not self._pending:
            return succeed(None)
        return DeferredList(list(self._pending), consumeErrors=True).addCallback(lambda _: None)


def wrap_method(instance: Any, name: str, wrapper_type: Callable[[Any, Any], Any],
                runner: BackgroundRetry) -> Any:
    """Replace ``instance.<name>`` (a Jasmin object's method) by ``wrapper_type(method,
    runner)``, on that instance only (Jasmin's class is untouched); answer the wrapper.
    Installing twice wraps once."""
    current = getattr(instance, name)
    if isinstance(current, wrapper_type):  # type: ignore[arg-type]
        return current
    wrapper = wrapper_type(current, runner)
    setattr(instance, name, wrapper)
    return wrapper


__all__ = ["BackgroundRetry", "wrap_method"]
