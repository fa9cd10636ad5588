"""End-to-end fixtures: a complete local gateway (redis, RabbitMQ, simulator, our launcher).

One gateway per test module (about 6 s to start); every process is stopped at module end,
even when a test fails.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jasmin_credits.localgateway import LocalGateway, wait_until
from tests.smpp_client import SmppTestClient

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def gateway() -> Iterator[LocalGateway]:
    """A provisioned gateway: user alice/alicepwd, connector smsc, pass-through interceptor."""
    rundir = Path(tempfile.mkdtemp(prefix="jc-e2e-"))
    gw = LocalGateway(rundir)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
    shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture
def smpp_client(gateway: LocalGateway) -> Iterator[Callable[..., SmppTestClient]]:
    """Factory of bound smpplib clients to the gateway (alice by default), closed afterwards."""
    clients: list[SmppTestClient] = []

    def connect(system_id: str = "alice", password: str = "alicepwd",
                bind: str = "transceiver") -> SmppTestClient:
        client = SmppTestClient(gateway.smpp_port, system_id, password, bind=bind)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def books(gateway: LocalGateway):
    """The gateway's wallets (tests/e2e/credits_support.py); alice's credit log must sum to
    her balance once the test is over."""
    from tests.e2e.credits_support import Books

    books = Books(gateway)
    yield books
    books.assert_log_sums("alice")


@pytest.fixture
def destination() -> str:
    """A destination number no other test in the session uses."""
    return f"3361{next(_numbers):07d}"


def wait_received(gateway: LocalGateway, destination: str, count: int = 1,
                  timeout: float = 15.0) -> list[dict]:
    """Wait until the simulator has ``count`` submit_sm for ``destination``; return them."""
    def found() -> list[dict] | None:
        rows = [r for r in gateway.smsc_received() if r["destination_addr"] == destination]
        return rows if len(rows) >= count else None

    return wait_until(found, timeout, message=f"{count} submit_sm to {destination}")
