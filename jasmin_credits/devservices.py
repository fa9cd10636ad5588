"""Start and stop the local services a development gateway and the tests need.

Everything binds to loopback and lives under one run directory, so several runs can share a
machine (each picks free ports). These helpers are for development, demos and tests; a
production gateway runs its services under systemd.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

_ISSUED: set[int] = set()
"""Ports :func:`free_port` handed out in this process: never twice."""


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux's default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(span: int = 1) -> int:
    """A TCP port on 127.0.0.1, free now, with the ``span - 1`` ports after it.

    The ports come from below the kernel's ephemeral range, never from it: a port the
    kernel may give any outgoing connection as its source port (a client reconnecting,
    an HTTP request) can be taken between this call and the moment our server binds it,
    and a client reconnecting to a server that is down can even connect to itself there.
    A port is never handed out twice by one process, so two services of one gateway never
    get the same one.
    """
    low, _ = _ephemeral_range()
    for _ in range(1000):
        # below the ephemeral range when it leaves room, else the kernel's choice
        port = random.randint(20000, low - span) if low - span > 21000 else _kernel_port()
        ports = range(port, port + span)
        if _ISSUED.isdisjoint(ports) and all(port_is_free(p) for p in ports):
            _ISSUED.update(ports)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``host:port``.

    Only for start-up of child processes outside the reactor (tests, demo launcher).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def find_binary(name: str, *candidates: str) -> str:
    """Locate a server binary on PATH or at one of ``candidates``; explain how to install it."""
    found = shutil.which(name)
    if found:
        return found
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"{name} not found: install it (apt-get install {name})")


class RedisServer:
    """A private ``redis-server`` on a free loopback port, with AOF persistence in ``rundir``."""

    def __init__(self, rundir: Path, port: int | None = None, appendonly: bool = True,
                 appendfsync: str = "everysec", extra_args: tuple[str, ...] = ()):
        self.rundir = Path(rundir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        """More ``redis-server`` flags, e.g. ``("--requirepass", "secret")``."""
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers."""
        binary = find_binary("redis-server", "/usr/bin/redis-server")
        self.rundir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.rundir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(self.rundir / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the server abruptly (fault tests)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class BrokerExited(RuntimeError):
    """rabbitmq-server ended before it was ready."""


class RabbitMQServer:
    """A private RabbitMQ broker on loopback, with every file under ``rundir``.

    Runs Debian's ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (the ``/usr/sbin``
    wrapper switches user), with ``HOME`` in ``rundir`` (the Erlang cookie lives there and
    ``rabbitmqctl`` needs the same one), node ``rabbit@localhost``, and a private ``epmd`` on
    127.0.0.1 and its own port, so the broker leaves nothing behind and does not meet another
    broker on the machine. The AMQP, distribution and CLI ports are all picked free.
    Default credentials: guest/guest (allowed on loopback). Works as root on Debian 12.
    """

    def __init__(self, rundir: Path, port: int | None = None, startup_timeout: float = 60.0):
        self.rundir = Path(rundir)
        self.port = port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.ctl_dist_port_min = free_port(span=11)  # rabbitmqctl takes one of 11
        self.startup_timeout = startup_timeout
        self.nodename = "rabbit@localhost"
        self.process: subprocess.Popen | None = None
        self._epmd_started = False

    def env(self) -> dict[str, str]:
        """The environment for ``rabbitmq-server``, ``rabbitmqctl`` and ``epmd``."""
        base = self.rundir
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(base / "home"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_dist_port_min),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(min(self.ctl_dist_port_min + 10, 65535)),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_LOGS": str(base / "log" / "rabbit.log"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        }

    def start(self) -> RabbitMQServer:
        """Start epmd and the broker; return once ``rabbitmqctl await_startup`` succeeds."""
        if not os.access(RABBITMQ_SERVER, os.X_OK):
            raise FileNotFoundError(
                f"{RABBITMQ_SERVER} not found: install it (apt-get install rabbitmq-server)")
        for sub in ("home", "mnesia", "log"):
            (self.rundir / sub).mkdir(parents=True, exist_ok=True)
        (self.rundir / "enabled_plugins").write_text("[].\n")
        (self.rundir / "rabbitmq.conf").write_text(
            "loopback_users.guest = true\n"
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.rundir / "rabbitmq-env.conf").write_text("")
        for attempt in range(1, 4):
            try:
                self._start_once()
                return self
            except BrokerExited:
                # Seen rarely under load: the broker quits at boot. Keep its log, take new
                # distribution ports (the AMQP port is already in others' configs), retry.
                self.stop()
                if attempt == 3:
                    raise
                os.replace(self.rundir / "log", self.rundir / f"log.failed-{attempt}")
                (self.rundir / "log").mkdir()
                self.dist_port, self.epmd_port = free_port(), free_port()
                self.ctl_dist_port_min = free_port(span=11)
            except BaseException:
                self.stop()
                raise
        return self

    def _start_once(self) -> None:
        env = self.env()
        epmd = find_binary("epmd", "/usr/bin/epmd")
        subprocess.run([epmd, "-address", "127.0.0.1", "-port", str(self.epmd_port), "-daemon"],
                       env=env, check=True, timeout=10)
        self._epmd_started = True
        wait_for_port(self.epmd_port, timeout=10)
        with open(self.rundir / "log" / "stdout.log", "ab") as out:
            self.process = subprocess.Popen([RABBITMQ_SERVER], env=env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self._await_startup()

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([RABBITMQCTL, "-n", self.nodename, *args], env=self.env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def _await_startup(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerExited(f"rabbitmq-server exited with {self.process.returncode}; "
                                   f"see {self.rundir / 'log'}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"rabbitmq did not start in {self.startup_timeout}s")
            try:
                done = self._ctl("await_startup", "--timeout", str(max(1, int(remaining))),
                                 timeout=remaining + 5)
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 0:
                wait_for_port(self.port, timeout=10)
                return
            # The node may not be registered in epmd yet: await_startup fails fast then.
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the broker (``rabbitmqctl stop``, then SIGTERM/SIGKILL) and our epmd."""
        if self.process is not None and self.process.poll() is None:
            try:
                self._ctl("stop", timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self._kill_group()
        self.process = None
        if self._epmd_started:
            epmd = find_binary("epmd", "/usr/bin/epmd")
            try:
                subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env(),
                               capture_output=True, timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._epmd_started = False

    def kill(self) -> None:
        """Kill the broker abruptly (fault tests); epmd stays until ``stop()``."""
        if self.process is not None and self.process.poll() is None:
            self._kill_group()
        self.process = None

    def _kill_group(self) -> None:
        assert self.process is not None
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def bindings(self) -> set[tuple[str, str, str]]:
        """``(exchange, queue, routing key)`` of every binding on vhost ``/``
        (``rabbitmqctl list_bindings``; the default exchange's have an empty name)."""
        done = self._ctl("list_bindings", "-q", "--no-table-headers", "source_name",
                         "destination_name", "routing_key", timeout=30)
        if done.returncode != 0:
            return set()
        found = set()
        for line in done.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                found.add((parts[0], parts[1], parts[2]))
        return found

    def delete_queue(self, name: str) -> None:
        """Delete queue ``name`` on vhost ``/`` (``rabbitmqctl delete_queue``)."""
        done = self._ctl("delete_queue", name, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"cannot delete queue {name}: {done.stderr.strip()}")

    def queue_consumers(self) -> dict[str, int]:
        """Queue name → number of consumers, on vhost ``/`` (``rabbitmqctl list_queues``)."""
        return self._queue_column("consumers")

    def queue_messages(self) -> dict[str, int]:
        """Queue name → messages in it, ready or unacknowledged, on vhost ``/``."""
        return self._queue_column("messages")

    def _queue_column(self, column: str) -> dict[str, int]:
        done = self._ctl("list_queues", "-q", "--no-table-headers", "name", column,
                         timeout=30)
        if done.returncode != 0:
            return {}
        queues = {}
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                queues[parts[0]] = int(parts[1])
        return queues
