"""Helpers for end-to-end credit tests: read and fund wallets in a gateway's Redis."""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jasmin_credits.keys import Keys
from jasmin_credits.localgateway import LocalGateway, wait_until
from jasmin_credits.store import CreditStore, StoreSettings, Wallet
from tests.sync_redis import SyncRedis

REPO_CONFIG = "config/credits.yaml"
# world.yaml prices in units of 1/10000 credit
PRICE = {"447": 500, "33": 800, "1": 550}


class WallClock(Clock):
    """The real time, for a live gateway's periods; its timers never fire (every call of the
    synchronous store completes at once)."""

    def seconds(self) -> float:
        return time.time()


class Books:
    """Synchronous access to the wallets of a running gateway (its Redis, prefix ``jc``)."""

    def __init__(self, gateway: LocalGateway):
        client = redis.Redis(host="127.0.0.1", port=gateway.redis_port, decode_responses=True)
        clock = WallClock()
        self.store = CreditStore(SyncRedis(client), clock=clock, reactor=clock,
                                 keys=Keys("jc"), settings=StoreSettings(batch=False))
        self._case = SynchronousTestCase()
        self._ops = 0

    def run(self, deferred: Any) -> Any:
        return self._case.successResultOf(deferred)

    def top_up(self, uid: str, amount: int) -> int:
        self._ops += 1
        balance, _ = self.run(self.store.top_up(uid, amount, op_id=f"e2e-{time.time_ns()}",
                                                actor="e2e"))
        return balance

    def configure(self, uid: str, **settings: int | None) -> None:
        self.run(self.store.configure(uid, {k.replace("__", ":"): v
                                            for k, v in settings.items()}))

    def wallet(self, uid: str) -> Wallet:
        return self.run(self.store.wallet(uid))

    def log(self, uid: str) -> list:
        entries, _ = self.run(self.store.log(uid, count=10_000))
        return entries

    def wait_settled(self, uid: str, balance: int, timeout: float = 20.0) -> Wallet:
        """Wait until ``uid`` has ``balance`` and nothing reserved."""
        def settled() -> Wallet | None:
            wallet = self.wallet(uid)
            return wallet if (wallet.balance, wallet.reserved) == (balance, 0) else None

        try:
            return wait_until(settled, timeout, interval=0.1,
                              message=f"{uid} settled at balance {balance}")
        except TimeoutError:
            wallet = self.wallet(uid)
            raise AssertionError(f"{uid}: balance {wallet.balance}, reserved {wallet.reserved};"
                                 f" expected balance {balance}, reserved 0") from None

    def assert_log_sums(self, uid: str, timeout: float = 20.0) -> None:
        """Once nothing is held any more, the credit log sums to the balance."""
        wait_until(lambda: self.wallet(uid).reserved == 0, timeout, interval=0.1,
                   message=f"{uid} has nothing reserved")
        total = sum(e.int_field("amount") for e in self.log(uid))
        assert total == self.wallet(uid).balance, (total, self.wallet(uid).balance)


@contextmanager
def running_gateway(overrides: dict, provision: Callable[[LocalGateway], None],
                    **kwargs: Any) -> Iterator[LocalGateway]:
    """A gateway with the example credits config plus ``overrides``, provisioned by
    ``provision``; everything stopped and removed afterwards."""
    rundir = Path(tempfile.mkdtemp(prefix="jc-e2e-credits-"))
    gateway = LocalGateway(rundir, REPO_CONFIG, provision=False, credits_overrides=overrides,
                           **kwargs)
    try:
        gateway.start()
        provision(gateway)
        yield gateway
    finally:
        gateway.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def provision_with_routes(gateway: LocalGateway, operator_script: str | None = None, *,
                          default_interceptor: bool = True) -> None:
    """Group, alice, the connector, a route for every destination except ``4420...`` (so
    those have no route), and the operator's interceptor: a DefaultInterceptor running
    ``operator_script`` (pass-through if None), or, with ``default_interceptor=False``, only
    a StaticMTInterceptor for ``3366...`` destinations running ``operator_script``."""
    with gateway.jcli() as jcli:
        gateway.add_group(jcli)
        gateway.add_user(jcli)
        gateway.add_smsc_connector(jcli)
        jcli.run("filter -a", ["type DestinationAddrFilter", "fid routable",
                               "destination_addr ^(?!4420).*"])
        jcli.run("mtrouter -a", ["type StaticMTRoute", "order 10", "filters routable",
                                 "connector smppc(smsc)", "rate 0.00"])
        script = None
        if operator_script is not None:
            script = gateway.rundir / "operator_script.py"
            script.write_text(operator_script)
        if default_interceptor:
            gateway.add_default_interceptor(jcli, script)
        elif script is not None:
            jcli.run("filter -a", ["type DestinationAddrFilter", "fid operator",
                                   "destination_addr ^3366.*"])
            jcli.run("mtinterceptor -a", ["type StaticMTInterceptor", "order 10",
                                          "filters operator", f"script python3({script})"])
    gateway.wait_connector_bound("smsc")


def http(gateway: LocalGateway, endpoint: str, **params: str) -> tuple[int, str]:
    """GET an HTTP API endpoint as alice: ``(status, body)``."""
    query = urllib.parse.urlencode({"username": "alice", "password": "alicepwd", **params})
    try:
        with urllib.request.urlopen(f"{gateway.http_url}/{endpoint}?{query}",
                                    timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def message_id(response: Any) -> str:
    """The message id of an SMPP ``submit_sm_resp``."""
    msgid = response.message_id
    return msgid.decode() if isinstance(msgid, bytes) else msgid


def jasmind_log(gateway: LocalGateway) -> str:
    """What the gateway's jasmind (our launcher) wrote so far, its log lines among it."""
    path = gateway.rundir / "log" / "jasmind.out"
    return path.read_text(errors="replace") if path.exists() else ""


def send(client: Any, destination: str, text: bytes = b"hello", **kwargs: Any) -> Any:
    """One submit_sm; its submit_sm_resp."""
    seq = client.submit(destination, text, **kwargs)
    client.pump(lambda: client.response_for(seq) is not None)
    return client.response_for(seq)


def settled_processes(config: Path) -> list[tuple[int, int]]:
    """(pid, parent pid) of each ``jasmin_credits.settled`` process with this credits config."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if b"jasmin_credits.settled" in argv and str(config).encode() in argv:
            # stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")"
            found.append((int(proc.name), int(stat.rsplit(")", 1)[1].split()[1])))
    return found
