"""``jasmin-credits-jasmind``: Jasmin's jasmind with our corrections and the credits hooks.

Same flags as ``jasmind.py`` (its ``Options`` class), same lock file, signal handling and start
sequence, plus:

* ``--credits-config PATH`` (or ``JASMIN_CREDITS_CONFIG``): load a
  :class:`jasmin_credits.runtime.CreditsRuntime` and plug it in (see :class:`CreditsJasminDaemon`);
* ``--lock-file PATH`` (default ``/tmp/jasmind``, like jasmind) so a test gateway can run
  beside another jasmind. The lock is an ``flock`` on ``PATH.lock``
  (:mod:`jasmin_credits.daemonlock`), which the kernel releases when the process dies:
  jasmind's link-based lock survives a SIGKILL or the OOM killer and then refuses every
  restart until the file is deleted by hand;
* ``--tcp-nodelay``: set TCP_NODELAY on accepted SMPP server connections (Twisted leaves
  Nagle on, which adds up to 40 ms per message above ~20 msg/s).

At start the Jasmin corrections of :mod:`jasmin_credits.jasmin_fixes` are applied (only those the
installed Jasmin needs), and after a RabbitMQ restart jasmind's queues and consumers are
restored (:mod:`jasmin_credits.amqp_recovery`; Jasmin alone stops sending until restarted).
Without a credits config it behaves exactly like ``jasmind.py`` plus those corrections.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from jasmin.bin.jasmind import JasminDaemon, Options
from twisted.internet import defer, reactor
from twisted.python import usage

from jasmin_credits import jasmin_fixes
from jasmin_credits.amqp_recovery import AmqpRecovery
from jasmin_credits.daemonlock import AnotherRuns, single_instance
from jasmin_credits.daemonlog import share_log
from jasmin_credits.settlement import QueueNames, bindings

CONFIG_ENV = "JASMIN_CREDITS_CONFIG"
DEFAULT_LOCK = "/tmp/jasmind"


class CreditsOptions(Options):
    """jasmind's options plus ``--credits-config``, ``--lock-file`` and ``--tcp-nodelay``."""

    # twisted.python.usage accumulates these lists along the class hierarchy.
    optParameters = [
        ["credits-config", None, None,
         f"jasmin-credits configuration file (default: ${CONFIG_ENV}, else none)"],
        ["lock-file", None, DEFAULT_LOCK, "lock file preventing two daemons (like jasmind)"],
    ]
    optFlags = [
        ["tcp-nodelay", None, "Set TCP_NODELAY on accepted SMPP server connections"],
    ]


class CreditsJasminDaemon(JasminDaemon):
    """jasmind's daemon with the credits runtime plugged in at Jasmin's own seams.

    ``runtime`` (optional) must provide ``start()`` and ``stop()`` returning Deferreds,
    ``in_process`` (bool), ``make_interceptor_client()``, ``install_jcli(factory)`` and
    ``install_http(http_api_resource)``; optionally ``install_router(router_pb)`` and, in
    process only, ``install_amqp_broker(amqp_factory)`` and
    ``install_client_manager(smppcm_pb)``. Hook order in :meth:`start`: Jasmin corrections,
    ``runtime.start()`` (a failure stops the daemon with exit code 1), then jasmind's own
    start, during which the in-process interceptor client replaces Jasmin's PB client (and
    is handed by jasmind to the SMPP server factory, the HTTP API and the SMPP client
    manager), and ``install_amqp_broker``, ``install_router``, ``install_client_manager``,
    ``install_http`` and ``install_jcli`` run right after their objects are built (the SMPP
    client connectors start later: at jCli's ``load`` or on an operator's command).
    ``runtime.stop()`` runs before reactor shutdown, after jasmind stopped its services.
    With ``charging.mode: pre-routing`` the SMPP server and ``/send`` charge through
    :mod:`jasmin_credits.interceptors.prehook` instead of the interceptor client.
    """

    def __init__(self, opt: Any, runtime: Any = None) -> None:
        super().__init__(opt)
        share_log(self.log)
        self.runtime = runtime
        self.exit_code = 0
        self._runtime_started = False

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Apply the corrections, start the runtime, then jasmind's services."""
        applied = jasmin_fixes.apply()
        if applied:
            self.log.info("  Jasmin corrections applied: %s", ", ".join(applied))
        if self.runtime is not None:
            try:
                yield self.runtime.start()
            except Exception as error:
                self.log.critical("  Cannot start credits runtime: %s", error)
                self.exit_code = 1
                reactor.stop()
                return
            self._runtime_started = True
            reactor.addSystemEventTrigger("before", "shutdown", self._stop_runtime)
            self.log.info("  Credits runtime started.")
            if self.runtime.in_process and not self.options["enable-interceptor-client"]:
                self.log.info("  In-process interceptor: enabling the interceptor client.")
                self.options["enable-interceptor-client"] = True
        yield super().start()

    def _stop_runtime(self) -> Any:
        if not self._runtime_started:
            return None
        self._runtime_started = False
        self.log.info("  Stopping credits runtime.")
        return defer.maybeDeferred(self.runtime.stop).addErrback(
            lambda failure: self.log.error("  Credits runtime stop failed: %s", failure.value))

    def _in_process(self) -> bool:
        return self.runtime is not None and bool(self.runtime.in_process)

    def _pre_routing(self) -> bool:
        config = getattr(self.runtime, "config", None)
        return getattr(config, "charging_mode", None) == "pre-routing"

    def startInterceptorPBClient(self) -> Any:  # noqa: N802 - jasmind API
        """Use the runtime's in-process interceptor client when it has one, else Jasmin's.

        In ``pre-routing`` mode that client only runs the operator's scripts (it does not
        charge): :mod:`jasmin_credits.interceptors.prehook` charges after it.
        """
        if self._in_process():
            client = self.runtime.make_interceptor_client()
            if self._pre_routing():
                client = client.without_charging()
            self.components["interceptor-pb-client"] = client
            return defer.succeed(None)
        return super().startInterceptorPBClient()

    def stopInterceptorPBClient(self) -> Any:  # noqa: N802 - jasmind API
        """Disconnect the interceptor client (an in-process one only if it can)."""
        client = self.components["interceptor-pb-client"]
        if self._in_process():
            disconnect = getattr(client, "disconnect", None)
            return disconnect() if disconnect is not None else None
        return super().stopInterceptorPBClient()

    def startAMQPBrokerService(self) -> Any:  # noqa: N802 - jasmind API
        """jasmind's AMQP broker client, restored after every reconnection
        (:mod:`jasmin_credits.amqp_recovery`), then ``runtime.install_amqp_broker(factory)``.

        Before anything publishes through it: the router, the SMPP client manager and every
        connector's listener get this one factory afterwards; the runtime wraps its
        ``publish`` to settle the SMSC's answers in process (``settlement.link: queueing``).
        """
        result = super().startAMQPBrokerService()
        self._amqp_recovery().install()
        install = getattr(self.runtime, "install_amqp_broker", None)
        if install is not None and self._in_process():
            install(self.components["amqp-broker-factory"])
        return result

    def _amqp_recovery(self) -> AmqpRecovery:
        """The recovery of jasmind's factory, binding settlement's queues again before
        jasmind publishes: the runtime's, or without one (beside the drop-in interceptord)
        those of the default prefix that exist."""
        event_queues = getattr(self.runtime, "event_queues", None)
        if event_queues is not None:
            queues, existing_only = event_queues(), False
        else:
            queues, existing_only = bindings(QueueNames()), True
        config = getattr(self.runtime, "config", None)
        return AmqpRecovery(self.components["amqp-broker-factory"], self.components, reactor,
                            event_queues=queues, existing_only=existing_only,
                            confirms=config is not None and config.amqp.publisher_confirms)

    def startSMPPClientManagerPBService(self) -> Any:  # noqa: N802 - jasmind API
        """jasmind's SMPP client manager, then ``runtime.install_client_manager(manager)``.

        Before the SMPP server and the HTTP API start: both call the manager's
        ``perspective_submit_sm``, which the runtime wraps to link holds as Jasmin queues
        their messages (``settlement.link: queueing``).
        """
        result = super().startSMPPClientManagerPBService()
        install = getattr(self.runtime, "install_client_manager", None)
        if install is not None and self._in_process():
            install(self.components["smppcm-pb-factory"])
        return result

    def startRouterPBService(self) -> Any:  # noqa: N802 - jasmind API
        """jasmind's router, then ``runtime.install_router(router_pb)`` if it has one.

        Not in ``pre-routing`` mode: the prehook charges messages no interceptor matches,
        and a fallback interceptor would only add a script run per message.
        """
        result = super().startRouterPBService()
        install = getattr(self.runtime, "install_router", None)
        if install is not None and not self._pre_routing():
            install(self.components["router-pb-factory"])
        return result

    def startSMPPServerService(self) -> None:  # noqa: N802 - jasmind API
        """jasmind's SMPP server, optionally with TCP_NODELAY on accepted connections."""
        super().startSMPPServerService()
        if self.options["tcp-nodelay"]:
            set_tcp_nodelay_on_accept(self.components["smpp-server-factory"])
        if self._pre_routing():
            from jasmin_credits.interceptors import prehook

            prehook.install_smpp(self.components["smpp-server-factory"], self.runtime.charger,
                                 self.runtime.config)

    def startHTTPApiService(self) -> None:  # noqa: N802 - jasmind API
        """jasmind's HTTP API, then ``runtime.install_http(http_api_resource)``."""
        super().startHTTPApiService()
        if self._pre_routing():
            from jasmin_credits.interceptors import prehook

            api = self.components["http-api-factory"]
            send = getattr(api, "resource", api).children[b"send"]
            prehook.install_http(send, self.runtime.charger, self.runtime.config)
        if self.runtime is not None:  # after the prehook: it wraps Jasmin's resources
            self.runtime.install_http(self.components["http-api-factory"])

    def startJCliService(self) -> None:  # noqa: N802 - jasmind API
        """jasmind's jCli, then ``runtime.install_jcli(jcli_factory)``.

        The factory is installed before the reactor gets a chance to accept a connection.
        """
        super().startJCliService()
        factory = self.components["jcli-server"].factory
        self.components["jcli-factory"] = factory
        if self.runtime is not None:
            self.runtime.install_jcli(factory)


def set_tcp_nodelay_on_accept(factory: Any) -> None:
    """Make every protocol ``factory`` builds set TCP_NODELAY on its transport."""
    build = factory.buildProtocol

    def build_protocol(addr: Any) -> Any:
        proto = build(addr)
        if proto is not None:
            made = proto.connectionMade

            def connection_made() -> None:
                try:
                    proto.transport.setTcpNoDelay(True)
                except Exception:  # pragma: no cover - not a TCP transport
                    pass
                made()

            proto.connectionMade = connection_made
        return proto

    factory.buildProtocol = build_protocol


def load_runtime(path: str) -> Any:
    """Build the credits runtime from its configuration file (``ConfigError`` if invalid)."""
    from jasmin_credits.runtime import CreditsRuntime

    return CreditsRuntime.from_config_file(path)


def freeze_startup_objects() -> None:
    """Move every object alive after start-up out of the cyclic garbage collector's reach.

    jasmind keeps tens of thousands of long-lived objects (Jasmin, Twisted, txamqp, the
    rate cards); each full collection walked them all, in the reactor thread, and showed
    as the window-50 p99 (about 72 ms against 45 ms frozen, bench/bench_gateway.py). They
    are never garbage: ``gc.freeze()`` stops the walks. Per-message objects are collected
    as before.
    """
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None,
         runtime_loader: Callable[[str], Any] = load_runtime) -> None:
    """Run the daemon like jasmind's ``__main__`` block; exit 2 on a bad configuration.

    ``runtime_loader`` builds the runtime from the ``--credits-config`` path (a seam for tests).
    """
    exit_code = 0
    try:
        options = CreditsOptions()
        options.parseOptions(argv)
        credits_config = options["credits-config"] or os.environ.get(CONFIG_ENV) or None
        runtime = None
        if credits_config:
            from jasmin_credits.errors import ConfigError

            try:
                runtime = runtime_loader(credits_config)
            except ConfigError as error:
                print(f"{sys.argv[0]}: {error}", file=sys.stderr)
                raise SystemExit(2) from None
        if runtime is not None:
            runtime.lock_file = options["lock-file"]  # names this gateway's credit leases
        # Must not be executed simultaneously (c.f. jasmin #265)
        with single_instance(options["lock-file"], "jasmin-credits-jasmind"):
            daemon = CreditsJasminDaemon(options, runtime)
            signal.signal(signal.SIGINT, daemon.sighandler_stop)
            signal.signal(signal.SIGTERM, daemon.sighandler_stop)
            daemon.start()
            freeze_startup_objects()
            reactor.run()
            exit_code = daemon.exit_code
    except usage.UsageError as errortext:
        print(f"{sys.argv[0]}: {errortext}")
        print(f"{sys.argv[0]}: Try --help for usage details.")
        exit_code = 2
    except AnotherRuns:
        exit_code = 1
    if exit_code:
        raise SystemExit(exit_code)


if __name__ == "__main__":
    main()
