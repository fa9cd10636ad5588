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

    from twisted.internet import reactor

    from .daemonlock import AnotherRuns, single_instance
    from .runtime import CreditsRuntime

    try:
        runtime = CreditsRuntime.from_config_file(args.credits_config, role="background")
    except ConfigError as error:
        print(f"jasmin-credits-settled: {error}", file=sys.stderr)
        return 2
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
        with single_instance(args.lock_file, "jasmin-credits-settled"):
            signal.signal(signal.SIGINT, lambda *a: reactor.callFromThread(stop))
            signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(stop))
            reactor.callWhenRunning(lambda: runtime.start().addCallbacks(started, failed))
            reactor.run(installSignalHandlers=False)
    except AnotherRuns:
        return 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
