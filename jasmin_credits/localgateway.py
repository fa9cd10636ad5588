"""A complete Jasmin gateway on loopback, for development, demos and end-to-end tests.

:class:`LocalGateway` starts, under one run directory and on free loopback ports:
redis-server, RabbitMQ, the SMSC simulator (:mod:`jasmin_credits.smsc_simulator`), Jasmin's
``interceptord`` (unless the credits runtime intercepts in process), jasmind through our
launcher (:mod:`jasmin_credits.launcher`, with the 0.11.1 correction), and Jasmin's
``dlrlookupd`` and ``dlrd`` daemons so delivery receipts reach SMPP clients (running them
outside jasmind keeps delivery fast). Every child gets a clean environment: Jasmin reads any
``SECTION_OPTION`` variable as configuration.

It then provisions through jCli: group ``customers``, user ``alice``/``alicepwd``, the SMPP
client connector ``smsc`` to the simulator (``submit_throughput 0``, started and bound), a
``DefaultRoute`` to it and a pass-through ``DefaultInterceptor`` (Jasmin calls the interceptor
only when an interceptor matches). Each step is a public method, and ``provision=False`` skips
them all.

Run ``python -m jasmin_credits.localgateway [--rundir DIR] [--credits-config PATH]`` for an
interactive gateway.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jasmin_credits
from jasmin_credits.amqp import default_spec_path
from jasmin_credits.devservices import (
    RabbitMQServer,
    RedisServer,
    free_port,
    port_is_free,
    wait_for_port,
)
from jasmin_credits.jcli_client import JCliClient, JCliError

REPO_ROOT = Path(jasmin_credits.__file__).resolve().parent.parent

PASS_THROUGH_SCRIPT = '"""Pass-through MT interceptor: every message goes on unchanged."""\n'


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met after {timeout}s")
        time.sleep(interval)


class ChildProcess:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path,
                 cwd: Path) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                            stdout=log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def check_alive(self) -> None:
        """Raise RuntimeError with the log tail if the process ended."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        """The last lines of the process output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; return True if it had to be killed."""
        if self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
            return False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            return True


class LocalGateway:
    """Everything a Jasmin gateway needs, started under ``rundir`` on loopback.

    :param rundir: directory for configuration, stores, logs and the servers' data.
    :param credits_config: the jasmin-credits YAML file; the launcher gets a copy in
        ``rundir`` pointing at this gateway's Redis and RabbitMQ (card paths made absolute),
        with ``credits_overrides`` merged in (e.g. ``{"settlement": {...}}``).
    :param provision: run :meth:`provision` at the end of :meth:`start`.
    :param interceptord: start an interceptord; default: only without ``credits_config``
        (a credits runtime intercepting in process needs none). With ``credits_config``, it
        is ours (``jasmin-credits-interceptord``, charging): set ``charging: {mode:
        interceptor-pb}`` in ``credits_overrides`` so the launcher does not charge too.
    :param dlr_daemons: run ``dlrlookupd``/``dlrd`` (fast); False: jasmind's
        ``--enable-dlr-lookup --enable-dlr-thrower`` (about 5x slower delivery).
    :param smsc_args: extra simulator flags, e.g. ``["--fail", "3399=ESME_RSUBMITFAIL"]``.
    :param launcher_argv: command prefix starting the launcher (default
        ``[python, -m, jasmin_credits.launcher]``); the gateway appends its flags.
    :param stock_jasmind: run Jasmin's own ``jasmin.bin.jasmind`` (for comparisons): none
        of the launcher's flags (no ``--lock-file``: its lock is the fixed ``/tmp/jasmind``;
        no ``--tcp-nodelay``; no ``--credits-config``) and no 0.11.1 correction.
    :param extra_env: added to every Jasmin child's clean environment.
    :param startup_timeout: seconds allowed to each readiness wait.
    :param redis_aof: run redis-server with ``appendonly yes`` and ``appendfsync always``
        (fault tests that kill it); default: no persistence.
    :param external_redis_port: use the redis-server already listening on this loopback
        port (e.g. another gateway's, to share wallets) instead of starting one; it is
        neither started nor stopped here.
    """

    jcli_username = "jcliadmin"
    jcli_password = "jclipwd"

    def __init__(self, rundir: str | Path, credits_config: str | Path | None = None, *,
                 provision: bool = True, interceptord: bool | None = None,
                 dlr_daemons: bool = True, smsc_args: Iterable[str] = (),
                 launcher_argv: list[str] | None = None,
                 extra_env: Mapping[str, str] | None = None,
                 startup_timeout: float = 60.0,
                 credits_overrides: Mapping[str, Any] | None = None,
                 stock_jasmind: bool = False,
                 redis_aof: bool = False,
                 external_redis_port: int | None = None) -> None:
        self.rundir = Path(rundir).resolve()
        self.preferred_ports: dict[str, int] = {}
        """Ports to use when free (e.g. Jasmin's standard ones), by service name."""
        self.credits_source = Path(credits_config).resolve() if credits_config else None
        self.credits_overrides = dict(credits_overrides or {})
        self.credits_config = self.rundir / "credits.yaml" if credits_config else None
        self.provision_on_start = provision
        if interceptord is None:
            interceptord = self.credits_config is None
        self.use_interceptord = interceptord
        self.dlr_daemons = dlr_daemons
        self.smsc_args = list(smsc_args)
        self.stock_jasmind = stock_jasmind
        if stock_jasmind:
            launcher_argv = launcher_argv or [sys.executable, "-m", "jasmin.bin.jasmind"]
        self.launcher_argv = launcher_argv or [sys.executable, "-m", "jasmin_credits.launcher"]
        self.extra_env = dict(extra_env or {})
        self.startup_timeout = startup_timeout
        self.redis_aof = redis_aof
        self.external_redis_port = external_redis_port
        self.instance = uuid.uuid4().hex[:8]
        self.ports: dict[str, int] = {}
        self.redis: RedisServer | None = None
        self.rabbitmq: RabbitMQServer | None = None
        self.children: dict[str, ChildProcess] = {}
        self.config_path = self.rundir / "jasmin.cfg"
        self.smsc_log = self.rundir / "smsc.jsonl"
        self.interceptor_script = self.rundir / "passthrough.py"
        self.started_at: float | None = None
        self.startup_seconds: float | None = None

    # -- addresses ----------------------------------------------------------------------------

    @property
    def smpp_port(self) -> int:
        """Jasmin's SMPP server port (clients bind here)."""
        return self.ports["smpp"]

    @property
    def http_port(self) -> int:
        """Jasmin's HTTP API port."""
        return self.ports["http"]

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.http_port}"

    def metrics_urls(self) -> list[str]:
        """Where this gateway's Prometheus metrics are: jasmind's ``/metrics`` (with its
        settlement child's figures), and the separate jasmin-credits-settled's if it runs."""
        urls = [f"{self.http_url}/metrics"]
        if self.separate_settlement:
            urls.append(f"http://127.0.0.1:{self.ports['settled_metrics']}/")
        return urls

    @property
    def jcli_port(self) -> int:
        """jCli telnet port."""
        return self.ports["jcli"]

    @property
    def smsc_port(self) -> int:
        """The simulator's port."""
        return self.ports["smsc"]

    @property
    def redis_port(self) -> int:
        """redis-server port."""
        return self.ports["redis"]

    @property
    def amqp_port(self) -> int:
        """RabbitMQ AMQP port (guest/guest)."""
        return self.ports["amqp"]

    def jcli(self, timeout: float = 10.0) -> JCliClient:
        """A new, logged-in jCli session (close it, or use it as a context manager)."""
        return JCliClient("127.0.0.1", self.jcli_port, self.jcli_username, self.jcli_password,
                          timeout=timeout).connect()

    def smsc_received(self) -> list[dict[str, Any]]:
        """Every submit_sm the simulator received so far (its JSON-lines log, bytes as hex)."""
        import json

        if not self.smsc_log.exists():
            return []
        rows = []
        for line in self.smsc_log.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row["short_message"] = bytes.fromhex(row["short_message"])
                row["udh"] = bytes.fromhex(row["udh"]) if row["udh"] is not None else None
                rows.append(row)
        return rows

    # -- start / stop -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The clean environment of Jasmin and simulator children."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.rundir),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "LOG_PATH": str(self.rundir / "log"),
            "STORE_PATH": str(self.rundir / "store"),
            "RESOURCE_PATH": str(self.rundir),
            "CONFIG_PATH": str(self.rundir),
        }
        env.update(self.extra_env)
        return env

    def start(self) -> LocalGateway:
        """Start every service, wait until each is ready, provision; stop all on failure."""
        self.started_at = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - self.started_at
        return self

    def _start(self) -> None:
        for sub in ("log", "store", "redis", "rabbitmq"):
            (self.rundir / sub).mkdir(parents=True, exist_ok=True)
        for name in ("smpp", "http", "jcli", "router", "smppcm", "smpps_pb", "interceptor",
                     "smsc", "settled_metrics"):
            wanted = self.preferred_ports.get(name)
            self.ports[name] = wanted if wanted and port_is_free(wanted) else free_port()
        if self.external_redis_port is None:
            self.redis = RedisServer(self.rundir / "redis", appendonly=self.redis_aof,
                                     appendfsync="always" if self.redis_aof else "everysec")
            self.ports["redis"] = self.redis.port
        else:
            self.ports["redis"] = self.external_redis_port
        self.rabbitmq = RabbitMQServer(self.rundir / "rabbitmq")
        self.ports["amqp"] = self.rabbitmq.port
        self.write_config()
        if self.credits_source is not None:
            self.write_credits_config()
        self.interceptor_script.write_text(PASS_THROUGH_SCRIPT)

        if self.redis is not None:
            self.redis.start()
        # A small receipt delay lets the submit_sm_resp event reach dlrlookupd first (else
        # the receipt waits for dlrlookupd's retry).
        self._spawn("smsc", [sys.executable, "-m", "jasmin_credits.smsc_simulator",
                             "--port", str(self.smsc_port), "--log", str(self.smsc_log),
                             "--dlr-delay", "0.05", *self.smsc_args])
        if self.use_interceptord and self.credits_config is not None:
            self._spawn("interceptord", [sys.executable, "-m",
                                         "jasmin_credits.interceptors.interceptord",
                                         "-c", str(self.config_path),
                                         "--credits-config", str(self.credits_config),
                                         "--lock-file", str(self.rundir / "interceptord")])
        elif self.use_interceptord:
            self._spawn("interceptord", [sys.executable, "-m", "jasmin.bin.interceptord",
                                         "-c", str(self.config_path)])
        self.rabbitmq.start()  # the slow one (~5 s): the others start meanwhile
        self._wait_port("smsc", self.smsc_port)
        if self.use_interceptord:
            self._wait_port("interceptord", self.ports["interceptor"])

        argv = [*self.launcher_argv, "-c", str(self.config_path), "--enable-interceptor-client"]
        if not self.stock_jasmind:
            argv += ["--lock-file", str(self.rundir / "jasmind"), "--tcp-nodelay"]
        if not self.dlr_daemons:
            argv += ["--enable-dlr-lookup", "--enable-dlr-thrower"]
        if self.credits_config is not None and not self.stock_jasmind:
            argv += ["--credits-config", str(self.credits_config)]
        self._spawn("jasmind", argv)
        if self.separate_settlement:
            self._spawn("settled", [sys.executable, "-m", "jasmin_credits.settled",
                                    "--credits-config", str(self.credits_config),
                                    "--lock-file", str(self.rundir / "settled"),
                                    "--metrics-port", str(self.ports["settled_metrics"])])
        if self.dlr_daemons:
            self._spawn_dlr_daemon("dlrlookupd")
        for name in ("jcli", "http", "smpp"):
            self._wait_port("jasmind", self.ports[name])
        if self.dlr_daemons:
            # dlrd needs jasmind's SMPP server PB; started earlier, its reconnect back-off
            # would make the first receipts fail.
            self._spawn_dlr_daemon("dlrd")
            self.wait_for_consumers({"DLRLookup-main", "dlr_thrower"})
            wait_until(self._dlrd_logged_in, self.startup_timeout,
                       message="dlrd logged in to the SMPP server PB")
        if self.provision_on_start:
            self.provision()

    def restart_child(self, name: str, kill: bool = True, group: bool = True) -> ChildProcess:
        """Stop child ``name`` (SIGKILL if ``kill``, to its whole process group if ``group``,
        else SIGTERM), remove the lock file Jasmin's own daemons leave, start it again with the
        same command and wait until it listens (jasmind: jCli, HTTP and SMPP; interceptord
        and smsc: their port).

        jasmind reloads what jCli ``persist`` saved; anything not persisted is gone.
        """
        child = self.children[name]
        if kill:
            if child.process.poll() is None:
                try:
                    if group:
                        os.killpg(child.process.pid, signal.SIGKILL)
                    else:
                        child.process.kill()
                except ProcessLookupError:
                    pass
            child.process.wait()
        else:
            child.stop()
        self._remove_locks(name)
        child = self._spawn(name, child.argv)
        ports = {"jasmind": ("jcli", "http", "smpp"), "interceptord": ("interceptor",),
                 "smsc": ("smsc",)}.get(name, ())
        for port in ports:
            self._wait_port(name, self.ports[port])
        return child

    def _spawn_dlr_daemon(self, daemon: str) -> ChildProcess:
        """Jasmin's daemon; ours (the same, restored after a RabbitMQ restart:
        :mod:`jasmin_credits.jasmin_daemons`) unless this gateway runs stock jasmind."""
        module = (["jasmin.bin." + daemon] if self.stock_jasmind
                  else ["jasmin_credits.jasmin_daemons", daemon])
        return self._spawn(daemon, [sys.executable, "-m", *module,
                                    "-c", str(self.config_path), "-i", self.instance])

    def _dlrd_logged_in(self) -> bool:
        self.children["dlrd"].check_alive()
        try:
            log = (self.rundir / "log" / "smpp-server-pb.log").read_text(errors="replace")
        except FileNotFoundError:
            return False
        return "Authenticated Avatar" in log

    def _spawn(self, name: str, argv: list[str]) -> ChildProcess:
        child = ChildProcess(name, argv, self.env(), self.rundir / "log" / f"{name}.out",
                             self.rundir)
        self.children[name] = child
        return child

    def _wait_port(self, name: str, port: int) -> None:
        child = self.children[name]

        def listening() -> bool:
            child.check_alive()
            try:
                wait_for_port(port, timeout=0.2)
            except TimeoutError:
                return False
            return True

        wait_until(listening, self.startup_timeout, message=f"{name} listening on {port}")

    def wait_for_consumers(self, queues: set[str], timeout: float | None = None) -> None:
        """Wait until every queue in ``queues`` has a consumer (RabbitMQ CLI, ~1 s a call)."""
        assert self.rabbitmq is not None

        def consumed() -> bool:
            for name in ("dlrlookupd", "dlrd"):
                if name in self.children:
                    self.children[name].check_alive()
            have = self.rabbitmq.queue_consumers()
            return all(have.get(queue, 0) > 0 for queue in queues)

        wait_until(consumed, timeout or self.startup_timeout, interval=0.2,
                   message=f"consumers on {sorted(queues)}")

    def stop(self) -> None:
        """Stop everything in reverse order; remove lock files left by killed daemons."""
        for name in ("jasmind", "settled", "dlrd", "dlrlookupd", "interceptord", "smsc"):
            child = self.children.pop(name, None)
            if child is not None and child.stop():
                self._remove_locks(name)
        if self.rabbitmq is not None:
            self.rabbitmq.stop()
            self.rabbitmq = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def _remove_locks(self, name: str) -> None:
        # Jasmin's own daemons' link-based locks survive a SIGKILL; ours (our jasmind
        # launcher, interceptord and settled: flock) do not, and are left alone to prove it.
        base = {
            "jasmind": Path("/tmp/jasmind") if self.stock_jasmind else None,
            "dlrd": Path(f"/tmp/dlrd-{self.instance}"),
            "dlrlookupd": Path(f"/tmp/dlrlookupd-{self.instance}"),
            "interceptord": None if self.credits_config is not None else Path(
                "/tmp/interceptord"),
        }.get(name)
        if base is None:
            return
        lock = base.with_name(base.name + ".lock")
        try:
            lock.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration ------------------------------------------------------------------------

    def write_config(self) -> Path:
        """Write ``jasmin.cfg`` (also read by interceptord, dlrlookupd and dlrd)."""
        p = self.ports
        log = self.rundir / "log"
        store = self.rundir / "store"
        sections: dict[str, dict[str, Any]] = {
            "jcli": {"bind": "127.0.0.1", "port": p["jcli"], "log_file": log / "jcli.log"},
            "http-api": {"bind": "127.0.0.1", "port": p["http"],
                         "access_log": log / "http-accesslog.log",
                         "log_file": log / "http-api.log"},
            "smpp-server": {"bind": "127.0.0.1", "port": p["smpp"]},
            "smpp-server-pb": {"bind": "127.0.0.1", "port": p["smpps_pb"]},
            "smpp-server-pb-client": {"host": "127.0.0.1", "port": p["smpps_pb"]},
            "client-management": {"bind": "127.0.0.1", "port": p["smppcm"],
                                  "store_path": store},
            "router": {"bind": "127.0.0.1", "port": p["router"], "store_path": store},
            "interceptor": {"bind": "127.0.0.1", "port": p["interceptor"]},
            "interceptor-client": {"host": "127.0.0.1", "port": p["interceptor"]},
            "amqp-broker": {"host": "127.0.0.1", "port": p["amqp"], "vhost": "/",
                            "username": "guest", "password": "guest",
                            "spec": default_spec_path(), "heartbeat": 0},
            "redis-client": {"host": "127.0.0.1", "port": p["redis"], "dbid": 0,
                             "poolsize": 10},
            "sm-listener": {"publish_submit_sm_resp": "False"},
            # A receipt can overtake its submit_sm_resp through the queues: retry soon.
            "dlr": {"dlr_lookup_retry_delay": 1, "dlr_lookup_max_retries": 5},
        }
        lines = []
        for section, options in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {value}" for key, value in options.items())
            lines.append("")
        self.config_path.write_text("\n".join(lines))
        return self.config_path

    @property
    def separate_settlement(self) -> bool:
        """Whether the credits config runs settlement in ``jasmin-credits-settled``."""
        settlement = self.credits_overrides.get("settlement") or {}
        return self.credits_config is not None and settlement.get("process") == "separate"

    def write_credits_config(self) -> Path:
        """Copy the credits config into ``rundir``, pointed at this gateway's services."""
        import yaml

        data = yaml.safe_load(self.credits_source.read_text()) or {}
        base = self.credits_source.parent
        data.setdefault("redis", {}).update(host="127.0.0.1", port=self.redis_port)
        data.setdefault("amqp", {}).update(host="127.0.0.1", port=self.amqp_port)
        cards = data.setdefault("cards", {})
        cards["files"] = [str((base / f).resolve()) for f in cards.get("files") or []]
        for section, values in self.credits_overrides.items():
            if isinstance(values, Mapping):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        self.credits_config.write_text(yaml.safe_dump(data, sort_keys=False))
        return self.credits_config

    # -- provisioning -------------------------------------------------------------------------

    def provision(self) -> None:
        """The default set-up: group, user alice, connector smsc (bound), route, interceptor."""
        with self.jcli() as jcli:
            self.add_group(jcli)
            self.add_user(jcli)
            self.add_smsc_connector(jcli)
            self.add_default_route(jcli)
            self.add_default_interceptor(jcli)
        self.wait_connector_bound("smsc")

    def add_group(self, jcli: JCliClient, gid: str = "customers") -> str:
        """``group -a``."""
        return jcli.run("group -a", [f"gid {gid}"])

    def add_user(self, jcli: JCliClient, uid: str = "alice", username: str = "alice",
                 password: str = "alicepwd", gid: str = "customers",
                 extra: Iterable[str] = ()) -> str:
        """``user -a`` (SMPP passwords have at most 8 characters)."""
        return jcli.run("user -a", [f"uid {uid}", f"gid {gid}", f"username {username}",
                                    f"password {password}", *extra])

    def add_smsc_connector(self, jcli: JCliClient, cid: str = "smsc", start: bool = True,
                           extra: Iterable[str] = ()) -> str:
        """``smppccm -a`` to the simulator with ``submit_throughput 0``, then start it.

        If Jasmin refuses (its answer only says "check log for details"), the error carries
        the end of the logs that say why: the run directory is often gone by the time
        anyone reads a failed run."""
        try:
            output = jcli.run("smppccm -a", [
                f"cid {cid}", "host 127.0.0.1", f"port {self.smsc_port}", "username gw",
                "password gwpwd", "bind transceiver", "submit_throughput 0", *extra])
        except JCliError as error:
            raise JCliError(f"{error}\n{self._log_tails('smppclient-manager', 'amqp-client')}"
                            ) from None
        if start:
            output += "\n" + jcli.run(f"smppccm -1 {cid}")
        return output

    def _log_tails(self, *names: str, lines: int = 15) -> str:
        """The last ``lines`` lines of each of Jasmin's logs ``names`` in the run directory."""
        parts = []
        for name in names:
            path = self.rundir / "log" / f"{name}.log"
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as error:
                tail = [f"(unreadable: {error})"]
            parts.append(f"--- {path.name}:\n" + "\n".join(tail))
        return "\n".join(parts)

    def add_default_route(self, jcli: JCliClient, cid: str = "smsc") -> str:
        """``mtrouter -a`` DefaultRoute to ``smppc(cid)`` with rate 0 (no Jasmin billing)."""
        return jcli.run("mtrouter -a", ["type DefaultRoute", f"connector smppc({cid})",
                                        "rate 0.00"])

    def add_default_interceptor(self, jcli: JCliClient, script: Path | None = None) -> str:
        """``mtinterceptor -a`` DefaultInterceptor running ``script`` (default pass-through)."""
        path = script or self.interceptor_script
        return jcli.run("mtinterceptor -a", ["type DefaultInterceptor", f"script python3({path})"])

    def wait_connector_bound(self, cid: str = "smsc", timeout: float | None = None) -> None:
        """Wait until connector ``cid`` is bound to its SMSC."""
        with self.jcli() as jcli:
            def bound() -> bool:
                for line in jcli.run("smppccm -l", check=False).splitlines():
                    fields = line.lstrip("#").split()
                    if fields and fields[0] == cid and "BOUND_TRX" in line:
                        return True
                return False

            wait_until(bound, timeout or self.startup_timeout, interval=0.1,
                       message=f"connector {cid} bound")

    def describe(self) -> str:
        """How to connect, for humans."""
        return "\n".join([
            f"Run directory:   {self.rundir} (logs in {self.rundir / 'log'})",
            f"SMPP server:     127.0.0.1:{self.smpp_port}  system_id alice, password alicepwd",
            f"HTTP API:        {self.http_url}/send?username=alice&password=alicepwd"
            "&to=33612345678&content=hello",
            f"jCli:            telnet 127.0.0.1 {self.jcli_port}  "
            f"({self.jcli_username}/{self.jcli_password}); try: credit -s alice",
            f"SMSC simulator:  127.0.0.1:{self.smsc_port}  (received: {self.smsc_log})",
            f"Redis:           127.0.0.1:{self.redis_port}",
            f"RabbitMQ (AMQP): 127.0.0.1:{self.amqp_port}  guest/guest",
        ])


def main(argv: list[str] | None = None) -> None:
    """Start a local gateway, print how to connect, run until Ctrl-C, then stop everything."""
    parser = argparse.ArgumentParser(prog="python -m jasmin_credits.localgateway",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rundir", default=None, help="run directory (default: a new temp dir)")
    parser.add_argument("--credits-config", default=None, help="jasmin-credits config file")
    parser.add_argument("--no-provision", action="store_true", help="skip the jCli set-up")
    parser.add_argument("--smsc-arg", action="append", default=[],
                        help="extra simulator flag, e.g. --smsc-arg=--fail=3399=ESME_RSUBMITFAIL")
    args = parser.parse_args(argv)
    rundir = Path(args.rundir) if args.rundir else Path(tempfile.mkdtemp(prefix="jc-gateway-"))
    gateway = LocalGateway(rundir, args.credits_config, provision=not args.no_provision,
                           smsc_args=args.smsc_arg)
    # Jasmin's usual ports when free, so any client's default settings work at once.
    gateway.preferred_ports = {"smpp": 2775, "http": 1401, "jcli": 8990}
    stop_requested = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        if gateway.started_at is not None and gateway.startup_seconds is None:
            raise KeyboardInterrupt  # still starting: abort start(), which stops what ran
        stop_requested = True

    # Explicit handlers: a shell may start us with SIGINT ignored (background jobs).
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        gateway.start()
        if args.credits_config and not args.no_provision:
            with gateway.jcli() as jcli:
                print(jcli.run("credit -t alice 100 welcome credit (local gateway)"))
        print(gateway.describe())
        print(f"Started in {gateway.startup_seconds:.1f}s. Ctrl-C to stop.", flush=True)
        while not stop_requested:
            for child in gateway.children.values():
                child.check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping...", flush=True)
        gateway.stop()
        if not args.rundir:
            shutil.rmtree(rundir, ignore_errors=True)


if __name__ == "__main__":
    main()
