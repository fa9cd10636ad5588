"""``jasmin-credits-interceptord``: a drop-in for Jasmin's ``interceptord.py`` that charges.

Same config file (``-c /etc/jasmin/interceptor.cfg``), same PB protocol, port and
authentication, so a stock ``jasmind.py --enable-interceptor-client`` talks to it
unchanged. Differences:

- it binds 127.0.0.1 unless the config file names a ``bind`` address (stock: 0.0.0.0);
- the script runs, then MT messages it let through are charged asynchronously: many
  messages are in flight at once (stock interceptord runs scripts one at a time);
- ``--credits-config`` (or ``$JASMIN_CREDITS_CONFIG``) names our YAML file, which must say
  ``charging.mode: interceptor-pb`` (settlement then links holds from Jasmin's ``submit.sm.*``
  events: ``settlement.link: queueing`` is refused, as only our launcher links that way);
- ``--metrics-port N`` serves our Prometheus metrics on ``http://127.0.0.1:N/``;
- with credit leases (``charging.lease``, on by default) it answers single messages from
  credit it carved out of the wallet beforehand, with no Redis call per message, and
  publishes each lease's end marker on an AMQP connection of its own
  (:meth:`~jasmin_credits.runtime.CreditsRuntime.start_drop_in_leases`); the lease's name
  in Redis comes from the host and ``--lock-file``.

Caveat: with stock jasmind, HTTP ``/rate`` also calls the interceptor and nothing tells
it from ``/send``. Such a hold is never queued: held one by one, the sweeper releases it
after ``settlement.unqueued_timeout``; held against a lease, it is never written and the
lease gives it back at its end. Either way it is never charged, but it holds credits until
then. Our launcher does not have this problem.
"""

from __future__ import annotations

import configparser
import logging
import pickle
import signal
import sys
from typing import Any

from jasmin.bin.interceptord import InterceptorDaemon
from jasmin.bin.interceptord import Options as StockOptions
from jasmin.interceptor.configs import InterceptorPBConfig
from jasmin.interceptor.interceptor import InterceptorPB
from jasmin.routing.Routables import RoutableSubmitSm
from jasmin.tools.cred.portal import JasminPBRealm
from jasmin.tools.spread.pb import JasminPBPortalRoot
from twisted.cred import portal
from twisted.cred.checkers import AllowAnonymousAccess, InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, reactor
from twisted.spread import pb

from ..daemonlog import share_log
from ..errors import ConfigError
from ..jasmin_fixes import stock_jasmind_warning
from .answer import answer
from .script import run_script

log = logging.getLogger("jasmin-credits")


class Options(StockOptions):
    optParameters = [
        *StockOptions.optParameters,
        ["credits-config", None, None, "jasmin-credits YAML configuration file"],
        ["lock-file", None, "/tmp/interceptord", "lock file preventing two daemons"],
        ["metrics-port", None, None, "serve Prometheus metrics on this port (127.0.0.1)"],
    ]


def loopback_by_default(config: InterceptorPBConfig, path: str) -> None:
    """Bind to 127.0.0.1 unless the file asks for another address."""
    parser = configparser.ConfigParser()
    parser.read(path)
    if not parser.has_option("interceptor", "bind"):
        config.bind = "127.0.0.1"


class ChargingInterceptorPB(InterceptorPB):
    """Jasmin's interceptor avatar, charging MT messages after the script."""

    def __init__(self, config: InterceptorPBConfig, runtime: Any):
        super().__init__(config)
        self.runtime = runtime

    def perspective_run_script(self, pyCode: str, routable: bytes) -> Any:  # noqa: N802,N803
        # The routable comes pickled from jasmind over the authenticated PB link, exactly
        # as in stock interceptord.
        obj = pickle.loads(routable)
        result = run_script(pyCode, obj)
        if result.failed or result.statuses is not None:
            return result.jasmin_answer()
        if not isinstance(result.routable, RoutableSubmitSm):
            return pickle.dumps(result.routable, pickle.HIGHEST_PROTOCOL)
        return defer.Deferred.fromCoroutine(self._charge(result.routable))

    async def _charge(self, routable: Any) -> Any:
        decision = await self.runtime.charger.charge(routable)
        return answer(decision, routable, self.runtime.config)


class CreditsInterceptorDaemon(InterceptorDaemon):
    """Jasmin's interceptor daemon with our avatar and a credits runtime."""

    def __init__(self, options: Any, runtime: Any):
        super().__init__(options)
        self.runtime = runtime

    def startInterceptorPBService(self) -> None:  # noqa: N802 - Jasmin's API
        """Serve our avatar with Jasmin's portal, checker and PB factory."""
        config = InterceptorPBConfig(self.options["config"])
        loopback_by_default(config, self.options["config"])
        avatar = ChargingInterceptorPB(config, self.runtime)
        share_log(avatar.log)  # our lines in the interceptor's log, as in jasmind's
        self.components["interceptor-pb-factory"] = avatar
        p = portal.Portal(JasminPBRealm(avatar))
        if config.authentication:
            checker = InMemoryUsernamePasswordDatabaseDontUse()
            checker.addUser(config.admin_username, config.admin_password)
            p.registerChecker(checker)
        else:
            p.registerChecker(AllowAnonymousAccess())
        self.components["interceptor-pb-server"] = reactor.listenTCP(
            config.port, pb.PBServerFactory(JasminPBPortalRoot(p)), interface=config.bind
        )

    @defer.inlineCallbacks
    def start(self) -> Any:
        yield self.runtime.start()
        yield super().start()
        self.runtime.start_drop_in_leases()
        warning = stock_jasmind_warning()
        if warning is not None:
            log.warning("%s", warning)
        if self.options["metrics-port"]:
            from ..metrics import serve_metrics

            self.components["metrics-server"] = serve_metrics(
                reactor, self.runtime.metrics, int(self.options["metrics-port"]))

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if "interceptor-pb-server" in self.components:
            yield self.stopInterceptorPBService()
        yield self.runtime.stop()
        reactor.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jasmin-credits-interceptord``."""
    from twisted.python import usage

    from ..daemonlock import AnotherRuns, single_instance
    from ..runtime import CreditsRuntime

    options = Options()
    try:
        options.parseOptions(argv if argv is not None else sys.argv[1:])
    except usage.UsageError as error:
        print(f"jasmin-credits-interceptord: {error}", file=sys.stderr)
        return 2
    try:
        runtime = CreditsRuntime.from_config_file(options["credits-config"])
        if runtime.config.settlement.link == "queueing":
            # Only our launcher links at queueing: with this daemon nobody would.
            raise ConfigError(runtime.config.source, "settlement.link",
                              "queueing needs our jasmind launcher; use events with "
                              "charging.mode: interceptor-pb")
    except ConfigError as error:
        print(f"jasmin-credits-interceptord: {error}", file=sys.stderr)
        return 2
    runtime.lock_file = options["lock-file"]  # names this interceptord's credit leases
    try:
        with single_instance(options["lock-file"], "jasmin-credits-interceptord"):
            daemon = CreditsInterceptorDaemon(options, runtime)
            signal.signal(signal.SIGINT, daemon.sighandler_stop)
            signal.signal(signal.SIGTERM, daemon.sighandler_stop)
            reactor.callWhenRunning(daemon.start)
            reactor.run()
    except AnotherRuns:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
