"""Fault tests: a credits gateway, background SMPP load, and the end-of-test books check.

The load sends every message to a destination of its own, so the SMSC simulator's record,
the client's answer and the credit log entry (field ``dest``) of one message can be matched
without any message id: a client left without an answer (its connection dropped) is still
accounted for.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jasmin_credits.destinations import normalise
from jasmin_credits.errors import InvalidDestination
from jasmin_credits.localgateway import REPO_ROOT, LocalGateway, wait_until
from jasmin_credits.ratecard import load_card
from tests.e2e.credits_support import Books, jasmind_log, provision_with_routes
from tests.smpp_client import SmppTestClient

CONFIG = REPO_ROOT / "config" / "credits.yaml"
WORLD = load_card(REPO_ROOT / "config" / "cards" / "world.yaml", 4)
ESME_ROK = 0
ESME_RMSGQFUL = 0x14
FUNDS = 100_000_000  # 125,000 French messages: the load never runs out

_numbers = itertools.count(1)


def key(destination: str) -> str:
    """How the credit log names a destination (E.164 digits), or the raw text."""
    try:
        return normalise(destination)
    except InvalidDestination:
        return destination


def price(destination: str) -> int:
    """Unit price of one part to ``destination`` on the world card."""
    rate = WORLD.lookup(key(destination))
    assert rate is not None, destination
    return rate.unit_price


def settlement(**values: Any) -> dict[str, Any]:
    """Short settlement timeouts for tests (``values`` override them)."""
    return {"settlement": {"unqueued_timeout": 3, "unanswered_timeout": 60,
                           "sweep_interval": 0.5, **values}}


def leases(on: bool, **values: Any) -> dict[str, Any]:
    """``charging`` overrides for a run with credit leases of ``values``, or without any
    (leases are on by default, so a run without them must say so)."""
    return {"lease": values if on else {"messages": 0}}


@contextlib.contextmanager
def credits_gateway(name: str, overrides: Mapping[str, Any] | None = None,
                    connector: tuple[str, ...] = (), funds: int | None = FUNDS,
                    **kwargs: Any) -> Iterator[LocalGateway]:
    """A started gateway charging in process, alice funded, routes for everything; every
    process stopped and the run directory removed afterwards, even on failure.

    ``connector`` adds ``smppccm`` settings (e.g. ``"pdu_red_to 3"``) before it starts.
    """
    rundir = Path(tempfile.mkdtemp(prefix=f"jc-faults-{name}-"))
    gateway = LocalGateway(rundir, CONFIG, provision=False,
                           credits_overrides=overrides or settlement(), **kwargs)
    try:
        gateway.start()
        if connector:
            _provision(gateway, connector)
        else:
            provision_with_routes(gateway)
        if funds is not None:
            Books(gateway).top_up("alice", funds)
        yield gateway
    finally:
        gateway.stop()
        if not os.environ.get("JC_FAULTS_KEEP"):  # keep logs for a post-mortem
            shutil.rmtree(rundir, ignore_errors=True)


def _provision(gateway: LocalGateway, connector: tuple[str, ...]) -> None:
    with gateway.jcli() as jcli:
        gateway.add_group(jcli)
        gateway.add_user(jcli)
        gateway.add_smsc_connector(jcli, extra=connector)
        gateway.add_default_route(jcli)
        gateway.add_default_interceptor(jcli)
    gateway.wait_connector_bound("smsc")


@dataclass
class Sent:
    """One message of the load: its destination and what the client was told."""

    destination: str
    status: int | None = None
    """The submit_sm_resp status, or None: no answer (connection lost)."""
    msgid: str | None = None
    answered_at: float | None = None
    """time.time() when the answer was read."""


@dataclass
class LoadResult:
    sent: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0

    def statuses(self) -> Counter:
        return Counter(s.status for s in self.sent)

    def told(self, status: int | None) -> list[Sent]:
        return [s for s in self.sent if s.status == status]


class Load(threading.Thread):
    """SMPP load in a background thread until :meth:`finish`: windows of ``window``
    submit_sm, each to a new destination ``<prefix><8 digits>``; reconnects when the gateway
    drops the connection (messages then in flight are recorded with no answer)."""

    def __init__(self, gateway: LocalGateway, prefix: str = "336", window: int = 10,
                 pause: float = 0.01, limit: int = 4000, system_id: str = "alice",
                 password: str = "alicepwd", port: int | None = None) -> None:
        super().__init__(daemon=True)
        self.gateway, self.prefix, self.window, self.pause = gateway, prefix, window, pause
        self.limit, self.system_id, self.password = limit, system_id, password
        self.port = port or gateway.smpp_port
        self.result = LoadResult()
        self._halt = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self.answered = 0
        """Messages whose window is over (answered, or given up with their connection)."""

    def destination(self) -> str:
        return f"{self.prefix}{next(_numbers):08d}"

    def run(self) -> None:
        client = None
        while not self._halt.is_set() and len(self.result.sent) < self.limit:
            if not self._go.is_set():
                self._go.wait(0.1)
                continue
            try:
                if client is None:
                    client = SmppTestClient(self.port, self.system_id, self.password,
                                            timeout=5)
                self._window(client)
            except Exception as error:  # noqa: BLE001 - the fault under test
                self.result.errors.append(f"{type(error).__name__}: {error}"[:200])
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.client.disconnect()
                    client = None
                    self.result.reconnects += 1
                self._halt.wait(0.2)  # pacing between reconnection attempts
            else:
                self._halt.wait(self.pause)  # pacing of the load
        if client is not None:
            client.close()

    def _window(self, client: SmppTestClient) -> None:
        pending: dict[int, Sent] = {}
        try:
            for _ in range(self.window):
                sent = Sent(self.destination())
                self.result.sent.append(sent)
                pending[client.submit(sent.destination, b"hello")] = sent
            client.pump(lambda: all(client.response_for(s) is not None for s in pending),
                        timeout=30)
        finally:
            for seq, sent in pending.items():
                response = client.response_for(seq)
                if response is not None:
                    sent.status = int(response.status)
                    sent.answered_at = time.time()
                    msgid = response.message_id
                    sent.msgid = msgid.decode() if isinstance(msgid, bytes) else msgid
            client.responses.clear()
            self.answered += len(pending)

    def hold(self) -> None:
        """Stop sending after the current window until :meth:`resume`."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def wait_sent(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` more messages got their answer (or were given up)."""
        if not self.answered_within(count, timeout):
            raise AssertionError(f"load stalled: {self.result.statuses()} "
                                 f"{self.result.errors[-3:]}")

    def answered_within(self, count: int, timeout: float) -> bool:
        """Whether ``count`` more messages got their answer within ``timeout`` seconds."""
        target = self.answered + count
        try:
            wait_until(lambda: self.answered >= target, timeout, interval=0.02,
                       message=f"{count} more messages answered")
        except TimeoutError:
            return False
        return True

    def finish(self, timeout: float = 60.0) -> LoadResult:
        self._halt.set()
        self.join(timeout)
        assert not self.is_alive(), "load thread did not stop"
        return self.result


@dataclass
class Ledger:
    """The books of one test, matched per destination."""

    charged: dict[str, int]
    """destination -> net amount charged (positive)."""
    charge_entries: Counter
    """destination -> number of charge entries."""
    charge_msgids: dict[str, str]
    smsc_ok: set[str]
    smsc_any: set[str]


def wait_settled(books: Books, gateways: LocalGateway | list[LocalGateway] = (),
                 timeout: float = 120.0) -> None:
    """Wait until the gateways' settlement queues are empty and then no reservation is open
    (the consumer and the sweeper did their work).

    Redis alone is not enough: an event requeued after a Redis failure waits (5 s) in its
    queue, unacked, and may still hold and charge a message whose hold the sweeper released
    meanwhile, or a leased message whose lease already ended (a ``late_hold``)."""
    gateways = gateways if isinstance(gateways, list | tuple) else [gateways]

    def settled() -> bool:
        if any(settlement_backlog(gw) for gw in gateways):
            return False
        wallet = books.wallet("alice")
        return (wallet.reserved == 0
                and not books.run(books.store.users_with_open_reservations()))

    try:
        wait_until(settled, timeout, interval=0.2, message="every reservation settled")
    except TimeoutError:
        wallet = books.wallet("alice")
        open_refs = books.run(books.store.open_reservations("alice", 2**62))
        raise AssertionError(f"not settled: reserved {wallet.reserved}, "
                             f"{len(open_refs)} open reservations") from None


def settlement_backlog(gateway: LocalGateway) -> int:
    """Events in the gateway's settlement queues (``jasmin_credits.*``), ready or being
    handled (unacked)."""
    assert gateway.rabbitmq is not None
    return sum(count for queue, count in gateway.rabbitmq.queue_messages().items()
               if queue.startswith("jasmin_credits."))


def ledger(gateway: LocalGateway | list[LocalGateway], books: Books) -> Ledger:
    """Read the credit log and the simulators' records."""
    charged: dict[str, int] = {}
    entries: Counter = Counter()
    msgids: dict[str, str] = {}
    for entry in books.log("alice"):
        dest = entry.fields.get("dest", "")
        if entry.type in ("charge", "refund") and dest:
            charged[dest] = charged.get(dest, 0) - entry.int_field("amount")
        if entry.type == "charge":
            entries[dest] += 1
            msgids[dest] = entry.fields.get("msgid", "")
    gateways = gateway if isinstance(gateway, list) else [gateway]
    rows = [row for gw in gateways for row in gw.smsc_received()]
    return Ledger(charged, entries, msgids,
                  {key(r["destination_addr"]) for r in rows if r["status"] == "ESME_ROK"},
                  {key(r["destination_addr"]) for r in rows})


def check_books(gateway: LocalGateway | list[LocalGateway], books: Books, result: LoadResult,
                start: int, *, told_ok_all_sent: bool = True,
                sent_uncharged_ok: frozenset[str] = frozenset()) -> Ledger:
    """The books after a fault: every message the SMSC accepted is charged exactly once
    (its price, under the message id the client was told), nothing else is charged, no
    reservation is open, and the credit log sums to the balance.

    ``told_ok_all_sent``: every message the client was told ESME_ROK reached the SMSC
    (false where the fault can lose queued messages). ``sent_uncharged_ok``: destinations
    the SMSC accepted whose answer the fault may have lost (the sweeper then settles them by
    ``unanswered_policy``): charged once or not at all.
    """
    wait_settled(books, gateway)
    books_now = ledger(gateway, books)
    ours = {key(s.destination) for s in result.sent}
    for sent in result.sent:
        dest = key(sent.destination)
        charged = books_now.charged.get(dest, 0)
        if dest in books_now.smsc_ok and dest in sent_uncharged_ok and not charged:
            pass  # answer lost with the fault: refunded by policy
        elif dest in books_now.smsc_ok:
            assert charged == price(dest), (dest, sent, charged,
                                            post_mortem(gateway, books, dest, sent.msgid))
            assert books_now.charge_entries[dest] == 1, (dest, books_now.charge_entries[dest])
            if sent.status == ESME_ROK:
                assert books_now.charge_msgids[dest] == sent.msgid, sent
        else:
            assert books_now.charged.get(dest, 0) == 0, (dest, sent)
        if sent.status not in (ESME_ROK, None):
            # Refused: never reached the SMSC and never charged.
            assert dest not in books_now.smsc_any, sent
        if sent.status == ESME_ROK and told_ok_all_sent:
            assert dest in books_now.smsc_any, sent
    assert set(books_now.charged) <= ours
    wallet = books.wallet("alice")
    assert wallet.reserved == 0
    total = sum(books_now.charged.values())
    assert wallet.balance == start - total, (wallet.balance, start, total)
    books.assert_log_sums("alice")
    return books_now


def post_mortem(gateway: LocalGateway | list[LocalGateway], books: Books, dest: str,
                msgid: str | None) -> dict[str, Any]:
    """What Redis and the gateways' logs say about the message to ``dest``, for a failed
    check's message (CI keeps nothing else): its reservations, credit log and events
    entries, the link of the message id the client was told, and every warning or error
    the gateways logged."""
    client = books.store.redis.client
    keys = books.store.keys
    holds = {}
    for key in client.scan_iter(match=keys.reservation("alice", "*"), count=1000):
        record = client.hgetall(key)
        if f"|{dest}|" in record.get("quote", ""):
            holds[key] = record
    refs = {key.rsplit(":", 1)[1] for key in holds}
    events, _ = books.run(books.store.events("alice", count=10_000))
    found = {
        "reservations": holds,
        "log": [(e.type, e.fields) for e in books.log("alice") if e.fields.get("dest") == dest],
        "events": [(e.type, e.fields) for e in events if e.fields.get("ref") in refs],
        "link": client.get(keys.message(msgid)) if msgid else None,
    }
    for gw in gateway if isinstance(gateway, list) else [gateway]:
        found[f"{gw.rundir}/log/jasmind.out"] = [
            line for line in jasmind_log(gw).splitlines()
            if " WARNING " in line or " ERROR " in line][-40:]
    return found


def summary(result: LoadResult, books_now: Ledger) -> dict[str, int]:
    """Counts for the report (printed by the tests; see docs/reliability.md)."""
    ours = [key(s.destination) for s in result.sent]
    return {
        "sent": len(result.sent),
        "told_ok": len(result.told(ESME_ROK)),
        "told_error": sum(1 for s in result.sent if s.status not in (ESME_ROK, None)),
        "no_answer": len(result.told(None)),
        "smsc_ok": sum(1 for d in ours if d in books_now.smsc_ok),
        "charged": sum(1 for d in ours if books_now.charged.get(d)),
        "sent_uncharged": sum(1 for d in ours
                              if d in books_now.smsc_ok and not books_now.charged.get(d)),
        "reconnects": result.reconnects,
    }


def restart_under_load(gateway: LocalGateway, child: str, group: bool = True,
                       before_kill: Callable[[], Any] | None = None) -> LoadResult:
    """SMPP load; after 300 answers ``child`` is killed (SIGKILL; to its whole process group
    if ``group``; ``before_kill()`` called just before) and started again; the load goes on
    until 300 more messages were answered after it was accepted again."""
    load = Load(gateway)
    load.start()
    try:
        load.wait_sent(300)
        if before_kill is not None:
            before_kill()
        gateway.restart_child(child, kill=True, group=group)
        if child == "jasmind":
            gateway.wait_connector_bound("smsc")
        killed_at = len(load.result.sent)
        wait_until(lambda: any(s.status == ESME_ROK for s in load.result.sent[killed_at:]),
                   90, message="accepted again after the restart")
        load.wait_sent(300)
    finally:
        result = load.finish()
    return result


def killed_and_restarted(gateway: LocalGateway, child: str, group: bool = True,
                         before_kill: Callable[[], Any] | None = None
                         ) -> tuple[LoadResult, dict]:
    """:func:`restart_under_load` on ``child``, then the books checked (a kill can lose
    queued messages, so not every ESME_ROK must reach the SMSC); the load and its counts."""
    start = Books(gateway).wallet("alice").balance
    result = restart_under_load(gateway, child, group, before_kill)
    books = Books(gateway)
    counts = summary(result, check_books(gateway, books, result, start, told_ok_all_sent=False))
    print(f"{child} restart:", counts)
    return result, counts
