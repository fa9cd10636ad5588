"""Ingest speed of a real local gateway: stock Jasmin beside jasmin-credits, in one run.

For each configuration, one after another (stock jasmind and interceptord have fixed lock
files, so only one of each can run), a complete :class:`~jasmin_credits.localgateway.LocalGateway`
is started on loopback (redis-server, RabbitMQ, the SMSC simulator, jasmind, dlrlookupd/dlrd),
measured, and stopped:

1. ``stock``: stock ``jasmind.py`` (plus TCP_NODELAY, as our launcher sets it: see
   :func:`run_stock_jasmind`), no MT interceptor;
2. ``stock+interceptord``: stock ``jasmind.py`` + stock ``interceptord.py``, no-op script;
3. ``in-process``: our launcher charging in process at Jasmin's interceptor step
   (``charging.mode: in-process``, a pass-through DefaultInterceptor);
4. ``drop-in``: stock ``jasmind.py`` + our ``jasmin-credits-interceptord`` charging;
5. ``pre-routing``: our launcher, ``charging.mode: pre-routing``, the default (no MT
   interceptor at all);
6. as 5 with ``settlement.enabled: false``: what jasmind would reach if settlement ran in
   another process (not a complete deployment by itself);
q. as 3 with ``settlement.link: queueing`` (opt-in: faster, not durable if jasmind dies);
0. our launcher without credits: stock jasmind plus the 0.11.1
   submit_sm_resp correction, which makes jasmind publish the response events (and feed
   the DLR daemons) that stock 0.11.1 never gets to: the fair baseline for (3) and (5).

Measurements, each in a fresh client process (``client-smpp`` / ``client-http`` sub-commands
of this script) after a warm-up that is not counted:

- SMPP: a raw Twisted SMPP client (TCP_NODELAY) bound as alice keeps ``window`` submit_sm
  outstanding; submit_sm per second (measured messages / time from the first send to the
  last response) and submit_sm_resp latency p50/p99;
- HTTP ``/send`` (configurations 0, 1, 3, 5, 6): ``--http-clients`` concurrent keep-alive
  clients; messages per second and latency p50/p99.

Between measurements the script waits (bounded) until the SMSC received every accepted
message, so one measurement's delivery backlog does not slow the next one. Charging
configurations fund alice with a huge balance first and check afterwards that credits
were really held. Also printed: the price lookup on a 50,000-prefix card
(``bench_price_lookup.py``), CPU count and load average. Every loop is bounded in count and
time; everything is stopped at the end, even on failure or Ctrl-C.

With ``--rounds N`` every configuration is measured N times, interleaved (1 2 3, 1 2 3...),
and the table shows medians, its ratios the median of each round's ratio: this machine's
speed drifts by tens of percent within minutes, and one round's two measurements sit close
in time. Every round's figures are printed below the table.

Run: ``.venv/bin/python bench/bench_gateway.py [--messages 5000] [--wait-load 0.8]``
(results: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# -- the SMPP client (runs in a child process) ------------------------------------------------

BIND_TRANSCEIVER = 0x00000009
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
ENQUIRE_LINK = 0x00000015
RESP = 0x80000000
HEADER = struct.Struct(">IIII")


def pdu(command_id: int, seq: int, body: bytes, status: int = 0) -> bytes:
    """One SMPP PDU: header and body."""
    return HEADER.pack(HEADER.size + len(body), command_id, status, seq) + body


def bind_body(system_id: str, password: str) -> bytes:
    """bind_transceiver body (SMPP 3.4)."""
    return (system_id.encode() + b"\0" + password.encode() + b"\0" + b"\0"
            + bytes([0x34, 0, 0]) + b"\0")


def submit_body(destination: str, text: bytes) -> bytes:
    """submit_sm body: alphanumeric sender, international destination, no receipt."""
    return (b"\0" + bytes([5, 0]) + b"bench\0" + bytes([1, 1]) + destination.encode() + b"\0"
            + bytes([0, 0, 0]) + b"\0\0" + bytes([0, 0, 0, 0, len(text)]) + text)


def percentile(samples: list[float], q: int) -> float:
    """The ``q``-th percentile of ``samples`` (nearest rank on sorted data)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summarize(count: int, elapsed: float, latencies: list[float], statuses: dict) -> dict:
    """The JSON result of one measurement."""
    return {"count": count, "seconds": elapsed, "rate": count / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "statuses": {str(k): v for k, v in statuses.items()},
            "client_cpu_s": round(time.process_time(), 2)}


def run_smpp_client(port: int, window: int, count: int, warmup: int, timeout: float,
                    prefix: str) -> dict:
    """Send ``warmup`` then ``count`` submit_sm keeping ``window`` outstanding; the result."""
    from twisted.internet import defer, protocol, reactor

    class Sender(protocol.Protocol):
        """Bind, then keep ``window`` submit_sm in flight through two phases."""

        def __init__(self) -> None:
            self.buffer = b""
            self.seq = 1
            self.sent_at: dict[int, float] = {}
            self.done = defer.Deferred()
            self.phase: list[Any] = []  # [remaining to send, outstanding, latencies, statuses]
            self.phases = [warmup, count]
            self.results: list[dict] = []
            self.number = 0

        def connectionMade(self) -> None:  # noqa: N802 - Twisted API
            self.transport.setTcpNoDelay(True)
            self.transport.write(pdu(BIND_TRANSCEIVER, self.next_seq(),
                                     bind_body("alice", "alicepwd")))

        def next_seq(self) -> int:
            self.seq += 1
            return self.seq

        def start_phase(self) -> None:
            if not self.phases:
                self.transport.write(pdu(UNBIND, self.next_seq(), b""))
                self.done.callback(self.results)
                return
            n = self.phases.pop(0)
            self.phase = [n, 0, [], {}, time.perf_counter(), n]
            if n == 0:
                self.start_phase()
                return
            self.fill()

        def fill(self) -> None:
            ph = self.phase
            chunks = []
            while ph[0] > 0 and ph[1] < window:
                ph[0] -= 1
                ph[1] += 1
                self.number += 1
                seq = self.next_seq()
                chunks.append(pdu(SUBMIT_SM, seq, submit_body(
                    f"{prefix}{self.number:07d}", b"bench message")))
                self.sent_at[seq] = time.perf_counter()
            if chunks:
                self.transport.write(b"".join(chunks))

        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
            self.buffer += data
            while len(self.buffer) >= 16:
                length, command_id, status, seq = HEADER.unpack_from(self.buffer)
                if len(self.buffer) < length:
                    break
                body, self.buffer = self.buffer[16:length], self.buffer[length:]
                self.handle(command_id, status, seq, body)

        def handle(self, command_id: int, status: int, seq: int, body: bytes) -> None:
            if command_id == SUBMIT_SM | RESP:
                now = time.perf_counter()
                ph = self.phase
                ph[2].append(now - self.sent_at.pop(seq, now))
                ph[3][status] = ph[3].get(status, 0) + 1
                ph[1] -= 1
                if ph[0] == 0 and ph[1] == 0:
                    if ph[5]:
                        self.results.append(summarize(ph[5], now - ph[4], ph[2], ph[3]))
                    self.start_phase()
                else:
                    self.fill()
            elif command_id == BIND_TRANSCEIVER | RESP:
                if status:
                    self.done.errback(RuntimeError(f"bind refused: status {status:#x}"))
                    return
                self.start_phase()
            elif command_id in (ENQUIRE_LINK, DELIVER_SM):
                self.transport.write(pdu(command_id | RESP, seq,
                                         b"\0" if command_id == DELIVER_SM else b""))
            elif command_id == RESP:
                self.done.errback(RuntimeError(f"generic_nack status {status:#x}"))

        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
            if not self.done.called:
                self.done.errback(RuntimeError(f"connection lost: {reason}"))

    outcome: dict[str, Any] = {}

    def finish(result: Any) -> None:
        if isinstance(result, list):
            outcome.update(result[-1])
        else:
            outcome["error"] = str(getattr(result, "value", result))
        if reactor.running:
            reactor.stop()

    def go() -> None:
        sender = Sender()
        connecting = protocol.ClientCreator(reactor, lambda: sender).connectTCP(
            "127.0.0.1", port, timeout=10)
        connecting.addErrback(lambda f: sender.done.errback(f) if not sender.done.called
                              else None)
        guard = reactor.callLater(timeout, lambda: sender.done.called
                                  or sender.done.errback(TimeoutError(
                                      f"not done after {timeout}s ({sender.number} sent)")))
        sender.done.addBoth(lambda r: (guard.active() and guard.cancel(), r)[1])
        sender.done.addBoth(finish)

    reactor.callWhenRunning(go)
    reactor.run()
    return outcome


def run_http_client(port: int, clients: int, count: int, warmup: int, timeout: float,
                    prefix: str) -> dict:
    """``clients`` concurrent keep-alive loops on ``/send``: warm-up, then ``count``; result."""
    import treq
    from twisted.internet import defer, reactor
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = clients
    numbers = iter(range(1, 10**9))
    outcome: dict[str, Any] = {}

    async def phase(n: int) -> dict:
        remaining = [n]
        latencies: list[float] = []
        statuses: dict[int, int] = {}

        async def loop() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                url = (f"http://127.0.0.1:{port}/send?username=alice&password=alicepwd"
                       f"&to={prefix}{next(numbers):07d}&content=bench+message")
                started = time.perf_counter()
                response = await treq.get(url, pool=pool, timeout=10)
                await treq.content(response)
                latencies.append(time.perf_counter() - started)
                statuses[response.code] = statuses.get(response.code, 0) + 1

        started = time.perf_counter()
        await defer.gatherResults([defer.Deferred.fromCoroutine(loop())
                                   for _ in range(clients)], consumeErrors=True)
        return summarize(n, time.perf_counter() - started, latencies, statuses)

    async def main(_reactor: Any) -> None:
        try:
            if warmup:
                await phase(warmup)
            outcome.update(await phase(count))
        except Exception as error:  # reported to the orchestrator as JSON
            outcome["error"] = f"{type(error).__name__}: {error}"
        finally:
            await pool.closeCachedConnections()

    def go() -> None:
        d = defer.Deferred.fromCoroutine(main(reactor))
        d.addTimeout(timeout, reactor, onTimeoutCancel=lambda *_: outcome.setdefault(
            "error", f"not done after {timeout}s"))
        d.addErrback(lambda _: None)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    return outcome


def run_stock_jasmind(argv: list[str]) -> None:
    """Jasmin's own ``jasmind.py`` with one change: TCP_NODELAY on accepted SMPP connections.

    Twisted leaves Nagle on; our launcher's ``--tcp-nodelay`` turns it off, and without the
    same here stock jasmind's window-50 figures measure Nagle's 40 ms, not Jasmin.
    """
    import runpy

    from jasmin.protocols.smpp.protocol import SMPPServerProtocol

    made = SMPPServerProtocol.connectionMade

    def connection_made(self: Any) -> None:
        self.transport.setTcpNoDelay(True)
        made(self)

    SMPPServerProtocol.connectionMade = connection_made
    sys.argv = ["jasmind.py", *argv]
    runpy.run_module("jasmin.bin.jasmind", run_name="__main__", alter_sys=True)


# -- the orchestrator -------------------------------------------------------------------------

@dataclass
class Configuration:
    """One gateway set-up to measure."""

    key: str
    label: str
    gateway_kwargs: dict[str, Any]
    interceptor: bool
    charging: bool
    http: bool
    results: dict[str, dict] = field(default_factory=dict)


def configurations() -> dict[str, Configuration]:
    """Every configuration, by its number."""
    config = str(REPO / "config" / "credits.yaml")
    stock = {"stock_jasmind": True,
             "launcher_argv": [sys.executable, str(Path(__file__).resolve()), "stock-jasmind"]}
    in_process = {"charging": {"mode": "in-process"}}
    return {
        "0": Configuration("0", "launcher without credits (stock + 0.11.1 fix), no interceptor",
                           {"interceptord": False}, False, False, True),
        "1": Configuration("1", "stock jasmind, no interceptor",
                           {**stock, "interceptord": False}, False, False, True),
        "2": Configuration("2", "stock jasmind + stock interceptord, no-op script",
                           {**stock, "interceptord": True}, True, False, False),
        "3": Configuration("3", "launcher, charging in process at the interceptor step "
                                "(charging.mode: in-process; settlement in its child)",
                           {"credits_config": config, "credits_overrides": in_process},
                           True, True, True),
        "g": Configuration("g", "as (3), settlement.process: gateway (inside jasmind)",
                           {"credits_config": config,
                            "credits_overrides": {**in_process,
                                                  "settlement": {"process": "gateway"}}},
                           True, True, True),
        "4": Configuration("4", "stock jasmind + our interceptord, charging (credit leases, "
                                "the default since the tenth session)",
                           {**stock, "credits_config": config, "interceptord": True,
                            "credits_overrides": {"charging": {"mode": "interceptor-pb"}}},
                           True, True, False),
        "4f": Configuration("4f", "as (4) on our launcher (stock jasmind plus the 0.11.1 "
                                  "submit_sm_resp correction; charging.mode interceptor-pb, "
                                  "so it leaves the charging to the interceptord): the drop-in "
                                  "as 0.11.1 needs it, every hold settled",
                            {"credits_config": config, "interceptord": True,
                             "credits_overrides": {"charging": {"mode": "interceptor-pb"}}},
                            True, True, False),
        "4n": Configuration("4n", "as (4), leases off (each hold in Redis: the drop-in "
                                  "interceptord until the ninth session)",
                            {**stock, "credits_config": config, "interceptord": True,
                             "credits_overrides": {"charging": {"mode": "interceptor-pb",
                                                                "lease": {"messages": 0}}}},
                            True, True, False),
        "5": Configuration("5", "launcher, pre-routing charging, leases off (each hold in "
                                "Redis; the defaults before the eighth session)",
                           {"credits_config": config,
                            "credits_overrides": {"charging": {"mode": "pre-routing",
                                                               "lease": {"messages": 0}}}},
                           False, True, True),
        "L": Configuration("L", "launcher, the defaults: pre-routing charging, credit leases "
                                "(single messages held from jasmind's memory), settlement in "
                                "its jasmin-credits-settled child (settlement.nice 10)",
                           {"credits_config": config,
                            "credits_overrides": {"charging": {"mode": "pre-routing"}}},
                           False, True, True),
        "K": Configuration("K", "as (L), settlement.nice 0: the child at jasmind's priority "
                                "(the defaults before the ninth session)",
                           {"credits_config": config,
                            "credits_overrides": {"charging": {"mode": "pre-routing"},
                                                  "settlement": {"nice": 0}}},
                           False, True, True),
        "6": Configuration("6", "as (5), settlement off in jasmind (ceiling if settled elsewhere)",
                           {"credits_config": config,
                            "credits_overrides": {"charging": {"mode": "pre-routing"},
                                                  "settlement": {"enabled": False}}},
                           False, True, True),
        "7": Configuration("7", "launcher, in-process charging, settlement in settled",
                           {"credits_config": config,
                            "credits_overrides": {**in_process,
                                                  "settlement": {"process": "separate"}}},
                           True, True, True),
        "8": Configuration("8", "launcher, pre-routing charging, settlement in settled",
                           {"credits_config": config,
                            "credits_overrides": {"charging": {"mode": "pre-routing"},
                                                  "settlement": {"process": "separate"}}},
                           False, True, True),
        "q": Configuration("q", "launcher, in-process charging, settlement.link: queueing",
                           {"credits_config": config,
                            "credits_overrides": {**in_process,
                                                  "settlement": {"link": "queueing"}}},
                           True, True, True),
        "9": Configuration("9", "stock jasmind + our interceptord, settlement in settled",
                           {**stock, "credits_config": config, "interceptord": True,
                            "credits_overrides": {"charging": {"mode": "interceptor-pb"},
                                                  "settlement": {"process": "separate"}}},
                           True, True, False),
    }


def provision(gateway: Any, interceptor: bool) -> None:
    """Group, alice, the bound connector, a DefaultRoute; the pass-through interceptor if
    asked (Jasmin calls no interceptor when none is configured)."""
    with gateway.jcli() as jcli:
        gateway.add_group(jcli)
        gateway.add_user(jcli)
        gateway.add_smsc_connector(jcli)
        gateway.add_default_route(jcli)
        if interceptor:
            gateway.add_default_interceptor(jcli)
    gateway.wait_connector_bound("smsc")


def smsc_count(gateway: Any) -> int:
    """submit_sm received by the simulator so far (lines of its log)."""
    try:
        with open(gateway.smsc_log, "rb") as log:
            return sum(1 for _ in log)
    except FileNotFoundError:
        return 0


def drain(gateway: Any, expected: int, timeout: float) -> bool:
    """Wait (bounded) until the simulator received ``expected`` messages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if smsc_count(gateway) >= expected:
            return True
        time.sleep(0.2)
    return False


def run_client(args: argparse.Namespace, kind: str, port: int, width: int, count: int,
               warmup: int, prefix: str) -> dict:
    """Run one measurement in a fresh client process; its JSON result."""
    argv = [sys.executable, str(Path(__file__).resolve()), kind, "--port", str(port),
            "--width", str(width), "--count", str(count), "--warmup", str(warmup),
            "--timeout", str(args.client_timeout), "--prefix", prefix]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                             timeout=args.client_timeout + 30)
    except subprocess.TimeoutExpired:
        return {"error": "client process timed out"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"client failed: {out.stderr.strip()[-500:]}"}


def _label(pid: int, comm: str) -> str | None:
    """The gateway component a process belongs to, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    for needle, label in (("jasmin_credits.settled", "settled"), ("client-", "client"),
                          ("jasmind", "jasmind"), ("launcher", "jasmind"),
                          ("interceptord", "interceptord"),
                          ("smsc_simulator", "smsc"), ("dlrlookupd", "dlr daemons"),
                          ("dlrd", "dlr daemons"), ("redis-server", "redis"),
                          ("beam", "rabbitmq")):
        if needle in cmdline or needle in comm:
            return label
    return None


def cpu_snapshot() -> dict[int, tuple[str, int]]:
    """CPU ticks (user + system) of every descendant of this process, with its label."""
    procs: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        close = data.rindex(")")
        fields = data[close + 2:].split()
        procs[int(entry)] = (int(fields[1]), data[data.index("(") + 1:close],
                             int(fields[11]) + int(fields[12]))
    mine, frontier = {}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, comm, ticks) in procs.items():
            if ppid == parent and pid not in mine:
                label = _label(pid, comm)
                mine[pid] = (label, ticks)
                frontier.append(pid)
    return {pid: (label, ticks) for pid, (label, ticks) in mine.items() if label}


def cpu_per_message(before: dict, after: dict, messages: int) -> dict[str, float]:
    """Microseconds of CPU per message, by component, between two snapshots."""
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid, (label, ticks) in after.items():
        if pid in before:
            used[label] = used.get(label, 0.0) + (ticks - before[pid][1]) * tick
    return {label: round(us / messages) for label, us in sorted(used.items()) if messages}


def start_profile(args: argparse.Namespace, conf: Configuration, name: str,
                  snapshot: dict[int, tuple[str, int]]) -> list[subprocess.Popen]:
    """With ``--profile DIR``: py-spy records jasmind, settled and the interceptord (if any)
    during one measurement, into ``DIR/<config>-<row>-<process>.txt`` (raw format: one line
    per stack with its sample count; ``--gil``: only samples of the thread running Python,
    so a process waiting in epoll is not counted as busy; py-spy from PATH or beside
    Python)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not args.profile or not Path(spy).exists():
        return []
    recorders = []
    for pid, (label, _) in snapshot.items():
        if label not in ("jasmind", "settled", "interceptord"):
            continue
        out = Path(args.profile) / f"{conf.key}-{name.replace(' ', '-')}-{label}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        recorders.append(subprocess.Popen(
            [spy, "record", "-p", str(pid), "-f", "raw", "-r", "250", "-o", str(out),
             "--nonblocking", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return recorders


def stop_profile(recorders: list[subprocess.Popen]) -> None:
    for spy in recorders:
        spy.send_signal(signal.SIGINT)
    for spy in recorders:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()


def accepted(result: dict) -> int:
    """Messages a measurement got accepted (SMPP status 0 / HTTP 200)."""
    statuses = result.get("statuses", {})
    return int(statuses.get("0", 0)) + int(statuses.get("200", 0))


def measure(conf: Configuration, args: argparse.Namespace, say: Callable[[str], None],
            results: dict[str, dict]) -> None:
    """Start ``conf``'s gateway, run its measurements into ``results``, stop it (always)."""
    from jasmin_credits.localgateway import LocalGateway

    rundir = Path(tempfile.mkdtemp(prefix=f"jc-bench-gw{conf.key}-"))
    gateway = LocalGateway(rundir, provision=False, **conf.gateway_kwargs)
    try:
        gateway.start()
        provision(gateway, conf.interceptor)
        books = None
        if conf.charging:
            from tests.e2e.credits_support import Books

            books = Books(gateway)
            books.top_up("alice", 10**15)
        say(f"  [{conf.key}] gateway up in {gateway.startup_seconds:.1f}s")
        sent = 0
        plan = [(f"smpp w{w}", "client-smpp", gateway.smpp_port, w) for w in args.windows]
        if conf.http and args.http_messages:
            plan.append((f"http c{args.http_clients}", "client-http", gateway.http_port,
                         args.http_clients))
        for n, (name, kind, port, width) in enumerate(plan):
            count = args.http_messages if kind == "client-http" else args.messages
            before = books.wallet("alice") if books else None
            cpu_before = cpu_snapshot()
            spy = start_profile(args, conf, name, cpu_before)
            try:
                result = run_client(args, kind, port, width, count, args.warmup,
                                    prefix=f"447{conf.key if conf.key.isdigit() else 9}{n}")
            finally:
                stop_profile(spy)
            result["cpu_us_per_msg"] = cpu_per_message(cpu_before, cpu_snapshot(),
                                                       count + args.warmup)
            results[name] = result
            sent += accepted(result) + (args.warmup if "error" not in result else 0)
            if not drain(gateway, sent, args.drain_timeout):
                say(f"  [{conf.key}] warning: SMSC got {smsc_count(gateway)} of {sent} "
                    f"after {args.drain_timeout}s")
            if books is not None and "error" not in result:
                # once delivered (settlement has read the messages): what was held for them,
                # not what credit leases hold unused
                after = books.wallet("alice")
                held = ((before.balance - before.reserved + before.leased)
                        - (after.balance - after.reserved + after.leased))
                result["held_messages"] = held // 500  # world.yaml: 447 costs 500 units
            say(f"  [{conf.key}] {name}: {describe(result)}")
    except Exception as error:
        results["error"] = {"error": f"{type(error).__name__}: {error}"}
        say(f"  [{conf.key}] FAILED: {error}")
    finally:
        gateway.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def describe(result: dict) -> str:
    """One measurement on one line."""
    if "error" in result:
        return f"ERROR {result['error']}"
    extra = f", held for {result['held_messages']}" if "held_messages" in result else ""
    cpu = ", ".join(f"{k} {v}" for k, v in result.get("cpu_us_per_msg", {}).items())
    return (f"{result['rate']:,.0f}/s, p50 {result['p50_ms']:.2f} ms, p99 "
            f"{result['p99_ms']:.2f} ms, statuses {result['statuses']}{extra}; "
            f"CPU us/msg (incl. delivery so far): {cpu}")


def merge_rounds(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """One configuration's measurements over ``--rounds``: per measurement, the median of
    each figure (rate, latencies, CPU per process), and every round's rate in ``rates``."""
    merged: dict[str, dict] = {}
    for name in dict.fromkeys(n for r in rounds for n in r):
        runs = [r[name] for r in rounds if name in r]
        good = [run for run in runs if "error" not in run]
        if not good:
            merged[name] = runs[0]
            continue
        cpu_labels = dict.fromkeys(k for run in good for k in run.get("cpu_us_per_msg", {}))
        merged[name] = {
            "rate": statistics.median(run["rate"] for run in good),
            "p50_ms": statistics.median(run["p50_ms"] for run in good),
            "p99_ms": statistics.median(run["p99_ms"] for run in good),
            "statuses": good[0]["statuses"],
            "cpu_us_per_msg": {k: round(statistics.median(
                run["cpu_us_per_msg"][k] for run in good if k in run.get("cpu_us_per_msg", {})))
                for k in cpu_labels},
            "rates": [run.get("rate") for run in runs],
            "rounds": runs,
        }
    return merged


def round_ratio(result: dict, base: dict | None) -> float | None:
    """``result``'s rate over ``base``'s: with rounds, the median of each round's ratio
    (a round's two measurements ran minutes apart, so a slow spell of the machine hits
    both), else the plain ratio."""
    if not base or not base.get("rate"):
        return None
    pairs = list(zip(result.get("rates", []), base.get("rates", []), strict=False))
    per_round = [r / b for r, b in pairs if r and b]
    if len(per_round) > 1:
        return statistics.median(per_round)
    return result["rate"] / base["rate"]


def round_lines(confs: list[Configuration], columns: list[str]) -> str:
    """With ``--rounds``: every round's rate, and its ratio to (1) in the same round."""
    base = next((c for c in confs if c.key == "1"), None)
    lines = []
    for conf in confs:
        for column in columns:
            result = conf.results.get(column)
            if not result or "rates" not in result:
                continue
            rates = " / ".join(f"{r:,.0f}" if r else "error" for r in result["rates"])
            line = f"({conf.key}) {column}: msg/s by round {rates}"
            base_rates = base.results.get(column, {}).get("rates") if base else None
            if base_rates and conf is not base:
                ratios = " / ".join(f"{r / b:.2f}x" if r and b else "-"
                                    for r, b in zip(result["rates"], base_rates, strict=False))
                line += f"; vs (1) by round {ratios}"
            lines.append(line)
    return "\n".join(lines)


def table(confs: list[Configuration], columns: list[str]) -> str:
    """The Markdown table of rates, latencies, ratios against (1), (2) and (0), and jasmind's
    CPU per message (warm-up included, and whatever delivery ran meanwhile). With
    ``--rounds``: medians over the rounds, and ratios as medians of each round's ratio."""
    by_key = {c.key: c for c in confs}
    lines = ["| configuration | measurement | msg/s | p50 ms | p99 ms | vs (1) | vs (2) | vs (0) |"
             " jasmind CPU us/msg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for conf in confs:
        for column in columns:
            result = conf.results.get(column)
            if result is None:
                continue
            if "error" in result:
                lines.append(f"| ({conf.key}) {conf.label} | {column} | error | | | | | | |")
                continue
            ratios = []
            for base in ("1", "2", "0"):
                ref = by_key.get(base)
                ref_result = ref.results.get(column) if ref else None
                ratio = round_ratio(result, ref_result)
                ratios.append(f"{ratio:.2f}x" if ratio is not None else "")
            lines.append(f"| ({conf.key}) {conf.label} | {column} | {result['rate']:,.0f} | "
                         f"{result['p50_ms']:.2f} | {result['p99_ms']:.2f} | "
                         f"{ratios[0]} | {ratios[1]} | {ratios[2]} | "
                         f"{result.get('cpu_us_per_msg', {}).get('jasmind', '')} |")
    return "\n".join(lines)


def price_lookup(size: int = 50_000, count: int = 100_000) -> str:
    """ns per lookup on a ``size``-prefix card, with ``bench_price_lookup``'s functions."""
    import random

    sys.path.insert(0, str(REPO / "bench"))
    from bench_price_lookup import SEED, build_card, destinations, time_ns

    rng = random.Random(SEED)
    card = build_card(rng, size)
    dests = destinations(rng, count)
    plain = {rate.prefix: rate for rate in card.entries}
    lookup = time_ns(card.lookup, dests) / count
    flat = time_ns(plain.get, [d[:3] for d in dests]) / count
    return (f"price lookup, {size:,}-prefix card: {lookup:,.0f} ns/lookup "
            f"({lookup / flat:.1f}x a plain dict.get)")


def wait_for_load(limit: float, max_wait: float, say: Callable[[str], None]) -> None:
    """Poll the 1-minute load average every 30 s until below ``limit`` (at most ``max_wait``)."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        say(f"load average {os.getloadavg()[0]:.2f} >= {limit}: waiting")
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))


def orchestrate(args: argparse.Namespace) -> int:
    """Run every selected configuration one after another; print the table."""
    def say(text: str) -> None:
        print(text, flush=True)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    if args.wait_load:
        wait_for_load(args.wait_load, args.wait_load_max, say)
    load = os.getloadavg()
    say(f"nproc {os.cpu_count()}, load average at start {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; {args.messages} SMPP messages per measurement (+{args.warmup} "
        f"warm-up), windows {args.windows}; HTTP {args.http_messages} with "
        f"{args.http_clients} clients")
    say(price_lookup())
    all_confs = configurations()
    confs = [all_confs[k] for k in args.configs]
    started = time.monotonic()
    rounds: dict[str, list[dict[str, dict]]] = {conf.key: [] for conf in confs}
    try:
        for number in range(1, args.rounds + 1):
            for conf in confs:
                say(f"({conf.key}) {conf.label}" + (f", round {number}" if args.rounds > 1
                                                    else ""))
                rounds[conf.key].append({})
                measure(conf, args, say, rounds[conf.key][-1])
    except KeyboardInterrupt:
        say("interrupted: gateways stopped")
        return 1
    for conf in confs:
        conf.results = (merge_rounds(rounds[conf.key]) if args.rounds > 1
                        else rounds[conf.key][0])
    columns = [f"smpp w{w}" for w in args.windows] + [f"http c{args.http_clients}"]
    say("")
    say(table(confs, columns))
    if args.rounds > 1:
        say("")
        say(round_lines(confs, columns))
    end_load = os.getloadavg()
    say(f"\n{time.monotonic() - started:.0f}s; load average at end {end_load[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"load_start": load, "load_end": end_load, "nproc": os.cpu_count(),
             "results": {c.key: {"label": c.label, **c.results} for c in confs}}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Orchestrator by default; ``client-smpp``/``client-http`` run one measurement."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "stock-jasmind":
        run_stock_jasmind(argv[1:])
        return 0
    if argv and argv[0] in ("client-smpp", "client-http"):
        parser = argparse.ArgumentParser(prog=f"bench_gateway.py {argv[0]}")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--width", type=int, required=True,
                            help="SMPP window or HTTP concurrent clients")
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--warmup", type=int, default=0)
        parser.add_argument("--timeout", type=float, default=120.0)
        parser.add_argument("--prefix", default="447900")
        a = parser.parse_args(argv[1:])
        run = run_smpp_client if argv[0] == "client-smpp" else run_http_client
        result = run(a.port, a.width, a.count, a.warmup, a.timeout, a.prefix)
        print(json.dumps(result), flush=True)
        return 0 if "error" not in result else 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000,
                        help="SMPP messages per measurement (at least 2,000 for the record)")
    parser.add_argument("--warmup", type=int, default=500, help="uncounted messages first")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--http-messages", type=int, default=2000)
    parser.add_argument("--http-clients", type=int, default=10)
    parser.add_argument("--configs", nargs="+", default=list("12034g56789q"),
                        choices=sorted(configurations()))
    parser.add_argument("--client-timeout", type=float, default=180.0,
                        help="seconds allowed to one measurement")
    parser.add_argument("--drain-timeout", type=float, default=90.0,
                        help="seconds allowed for delivery to catch up between measurements")
    parser.add_argument("--wait-load", type=float, default=0.0,
                        help="first wait until the 1-minute load average is below this")
    parser.add_argument("--wait-load-max", type=float, default=600.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every configuration this many times, interleaved "
                             "(1 2 3, 1 2 3, ...), and report medians")
    parser.add_argument("--json", default=None, help="also write the results there")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="record jasmind with py-spy during each measurement into DIR")
    return orchestrate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
