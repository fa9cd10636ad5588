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
import os
import signal
import sys
import threading
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
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when stdin reaches end of file (the launcher's pipe: "
                             "its process died)")
    parser.add_argument("--nice", type=int, default=0,
                        help="lower this process's priority by this much (0-19) at start")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on http://127.0.0.1:PORT/")
    parser.add_argument("--metrics-fd", type=int, default=None,
                        help="write the metrics, as JSON lines, to this pipe (the launcher "
                             "adds them to its own /metrics)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)-8s %(name)s %(message)s")

    from .daemonlock import AnotherRuns, single_instance

    try:
        # The lock first: a gateway whose child finds it taken tries again every few
        # seconds, so that attempt must cost nothing but this.
        with single_instance(args.lock_file, "jasmin-credits-settled"):
            return _run(args)
    except AnotherRuns:
        return 1


def _run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    if args.nice:
        _lower_priority(args.nice)

    from .runtime import CreditsRuntime

    try:
        runtime = CreditsRuntime.from_config_file(args.credits_config, role="background")
    except ConfigError as error:
        print(f"jasmin-credits-settled: {error}", file=sys.stderr)
        return 2
    exit_code = 0

    writer = None

    def started(_: Any) -> None:
        nonlocal writer, exit_code
        log.info("jasmin-credits-settled running: %s",
                 ", ".join(type(s).__name__ for s in runtime.services))
        if args.metrics_fd is not None:
            from .child_metrics import SnapshotWriter

            try:
                writer = SnapshotWriter(runtime.metrics.registry, args.metrics_fd, reactor)
            except OSError as error:  # not an open file descriptor
                log.critical("--metrics-fd %d: %s", args.metrics_fd, error.strerror)
                exit_code = 2
                stop()
                return
            writer.start()
        if args.metrics_port is not None:
            from twisted.internet.error import CannotListenError

            from .metrics import serve_metrics

            try:
                serve_metrics(reactor, runtime.metrics, args.metrics_port)
            except CannotListenError as error:
                log.critical("cannot serve metrics on 127.0.0.1:%d: %s", args.metrics_port,
                             error.socketError)
                exit_code = 1
                stop()
                return
            log.info("metrics on http://127.0.0.1:%d/", args.metrics_port)

    def failed(failure: Any) -> None:
        nonlocal exit_code
        log.critical("cannot start: %s", failure.value)
        exit_code = 1
        reactor.stop()

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        d = runtime.stop()
        d.addBoth(stopped)

    def stopped(_: Any) -> None:
        if writer is not None:
            writer.stop()  # the last figures, counted while stopping
        reactor.stop()

    signal.signal(signal.SIGINT, lambda *a: reactor.callFromThread(stop))
    signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(stop))
    if args.exit_with_parent:
        threading.Thread(target=_wait_for_parent_exit, args=(reactor, stop),
                         name="parent-watch", daemon=True).start()
    reactor.callWhenRunning(lambda: runtime.start().addCallbacks(started, failed))
    reactor.run(installSignalHandlers=False)
    return exit_code


def _lower_priority(increment: int) -> None:
    """Add ``increment`` to this process's niceness (0 to 19: never above normal)."""
    try:
        os.nice(max(0, min(19, increment)))
    except OSError as error:  # a sandbox without setpriority: run at normal priority
        log.warning("cannot lower the priority of jasmin-credits-settled: %s", error)


def _wait_for_parent_exit(reactor: Any, stop: Any) -> None:
    """Block (in its own thread) until stdin, the parent's pipe, reaches end of file."""
    while sys.stdin.buffer.read(4096):
        pass
    log.warning("the gateway that started jasmin-credits-settled is gone; stopping")
    reactor.callFromThread(stop)


if __name__ == "__main__":
    sys.exit(main())
