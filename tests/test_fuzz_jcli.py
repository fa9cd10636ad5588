"""Hypothesis fuzzing of the ``credit`` and ``price`` jCli commands over a StringTransport.

The store runs on the real test Redis through a synchronous client, so every answer is
complete when ``dataReceived`` returns. Properties: no traceback ever reaches the console,
and a line whose answer is not a success leaves every wallet, log and card assignment as
it was.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from tests.sync_redis import sync_store
from tests.test_jcli_credit import JCliSession, StubRuntime

USERS = ["alice", "bob", "carol", "zed", "", "ALICE", "a" * 70, "bob;DEL", "é"]
WORDS = [
    "credit", "price", "-t", "-s", "-l", "-u", "-r", "--log", "--events", "--since", "--until",
    "--type", "--page", "--before", "--plan", "-q", "--quote", "--reload", "-a", "--assign",
    "--user", "--group", "--show", "--list", "--top-up", "--update", "--remove", "--",
    "-", "--x", "-25", "1.5", "0", "1e9", "99999999999999999999", "0x10", "nan", "-inf",
    "1.23456", "10,5", "world", "gold", "big", "none", "447911123456", "+33612345678",
    "2026-13-45", "2026-01-01", "charge,topup", "ok", "ko", "daily", "overdraft", "'", '"',
    "\\", "%s", "{}", "\x00", "\t", "💶",
]
SUCCESS = ("Successfully",)


def _token() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(WORDS), st.sampled_from(USERS),
                     st.text(min_size=1, max_size=12).map(lambda t: t.replace("\n", " ")),
                     st.integers(-10**12, 10**12).map(str))


@st.composite
def lines(draw) -> str:
    command = draw(st.sampled_from(["credit", "price", "credit -t alice", "credit -u bob",
                                    "price -a gold", "credit --log"]))
    words = draw(st.lists(_token(), max_size=6))
    line = " ".join([command, *words]).replace("\r", " ")
    # Never let the fuzzer write files (``--csv PATH``, also abbreviated by optparse).
    return " ".join(w for w in line.split(" ") if not w.startswith("--c"))


def _result(awaitable):
    results = []
    deferred = awaitable if isinstance(awaitable, Deferred) else ensureDeferred(awaitable)
    deferred.addBoth(results.append)
    assert results, "the store call did not complete synchronously"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def _state(runtime: StubRuntime) -> tuple:
    store = runtime.store
    wallets = []
    for uid in ("alice", "bob", "carol"):
        wallet = _result(store.wallet(uid))
        entries, _ = _result(store.log(uid, count=1000))
        wallets.append((uid, wallet and (wallet.balance, wallet.reserved, wallet.overdraft,
                                         wallet.low_balance,
                                         tuple((u.credit_limit, u.msg_limit)
                                               for u in wallet.usage)),
                        len(entries)))
    return tuple(wallets), repr(runtime.card_assignments())


def _type(session: JCliSession, line: str) -> str:
    """Type one line; its whole answer (no traceback allowed)."""
    session.transport.clear()
    session.transport_proto.dataReceived(line.encode("utf-8") + b"\r\n")
    _result(session.jcli.when_idle())
    out = session.output()
    assert "Traceback" not in out, (line, out)
    return out


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(lines(), min_size=1, max_size=4))
def test_fuzzed_lines_never_traceback_and_refusals_change_nothing(typed):
    """Random credit/price lines: no traceback, and a line not answered 'Successfully'
    changes no wallet, log or card assignment."""
    clock = Clock()
    clock.advance(1_795_000_000)
    runtime = StubRuntime(sync_store(clock))
    _result(runtime.store.top_up("alice", 1_000_000, op_id="seed", actor="test"))
    session = JCliSession(runtime)
    try:
        # The harness sees answers: a known line succeeds, a known bad one is refused.
        assert "Successfully added" in _type(session, "credit -t bob 1")
        assert "Successfully" not in _type(session, "credit -t bob ten")
        for line in typed:
            before = _state(runtime)
            out = _type(session, line)
            in_session = session.jcli.sessionLineCallback is not None if hasattr(
                session.jcli, "sessionLineCallback") else False
            if not any(word in out for word in SUCCESS) and not in_session:
                assert _state(runtime) == before, (line, out)
    finally:
        session.close()
