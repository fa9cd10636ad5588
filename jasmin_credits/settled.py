"""``jasmin-credits-settled``: settlement, the sweeper, plans and event delivery, out of jasmind.

With ``settlement.process: separate`` the gateway processes (our jasmind launcher, our
interceptord) only charge (and, under ``settlement.link: queueing``, link and settle in
process); this daemon consumes Jasmin's AMQP events (``settlement.link: events`` only),
settles holds, sweeps, runs top-up plans and publishes events. It keeps that work off
jasmind's single reactor thread (Jasmin runs dlrd and dlrlookupd as separate daemons for the
same reason).
Run one or more (they share the work through the same queues); every operation is
idempotent, so a restart or a second instance never charges twice.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from .config import ENV_VAR
from .errors import ConfigError

log = logging.getLogger("jasmin-credits")


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``jasmin-credits-settled --credits-config PATH [--lock-file PATH]``."""
    parser = argparse.ArgumentParser(prog="jasmin-credits-settled",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--credits-config", default=None,
                        help=f"jasmin-credits YAML file (default: ${ENV_VAR})")
    parser.add_argument("--lock-file", default="/tmp/jasmin-credits-settled",
                        help="lock file against two daemons with the same file")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)-8s %(name)s %(message)s")

    from lockfile import AlreadyLocked, FileLock, LockTimeout
    from twisted.internet import reactor

    from .runtime import CreditsRuntime

    try:
        runtime = CreditsRuntime.from_config_file(args.credits_config, role="background")
    except ConfigError as error:
        print(f"jasmin-credits-settled: {error}", file=sys.stderr)
        return 2
    lock = FileLock(args.lock_file)
    try:
        lock.acquire(timeout=2)
    except (LockTimeout, AlreadyLocked):
        print(f"jasmin-credits-settled: another one runs (lock {args.lock_file})",
              file=sys.stderr)
        return 1
    exit_code = 0

    def started(_: Any) -> None:
        log.info("jasmin-credits-settled running: %s",
                 ", ".join(type(s).__name__ for s in runtime.services))

    def failed(failure: Any) -> None:
        nonlocal exit_code
        log.critical("cannot start: %s", failure.value)
        exit_code = 1
        reactor.stop()

    def stop(*_: Any) -> None:
        d = runtime.stop()
        d.addBoth(lambda _: reactor.stop())

    try:
        signal.signal(signal.SIGINT, lambda *a: reactor.callFromThread(stop))
        signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(stop))
        reactor.callWhenRunning(lambda: runtime.start().addCallbacks(started, failed))
        reactor.run(installSignalHandlers=False)
    finally:
        if lock.i_am_locking():
            lock.release()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
