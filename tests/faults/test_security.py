"""Security: the interceptor PB (loopback, password), Redis AUTH, no unpickling of Redis data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from jasmin.interceptor.proxies import InterceptorPBProxy
from jasmin.routing.jasminApi import MTInterceptorScript
from jasmin.tools.proxies import ConnectError
from twisted.trial.unittest import TestCase

from jasmin_credits.config import load_config
from jasmin_credits.devservices import RedisServer, free_port, wait_for_port
from jasmin_credits.errors import Refusal
from jasmin_credits.localgateway import REPO_ROOT
from jasmin_credits.runtime import CreditsRuntime
from tests.jasmin_objects import routable, smpp_message

PACKAGE = REPO_ROOT / "jasmin_credits"


def _credits_config(directory: Path, redis_port: int, **redis: object) -> Path:
    """A credits config on ``redis_port`` with settlement off (no RabbitMQ needed) and no
    ``jasmin-credits-settled`` child (these tests are about this process's connections)."""
    data = yaml.safe_load((REPO_ROOT / "config" / "credits.yaml").read_text())
    data["redis"].update(host="127.0.0.1", port=redis_port, key_prefix="jcsec", timeout=1,
                         connect_timeout=1, **redis)
    data["cards"]["files"] = [str(REPO_ROOT / "config" / "cards" / f)
                              for f in ("world.yaml", "premium.yaml")]
    data["charging"]["mode"] = "interceptor-pb"
    data["settlement"]["enabled"] = False
    data["settlement"]["process"] = "gateway"
    path = directory / "credits.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on TCP ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


class InterceptordTests(TestCase):
    """Our drop-in interceptord, started as operators run it (no ``bind`` in its config)."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="jc-sec-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.port = free_port()
        (self.dir / "interceptor.cfg").write_text(
            f"[interceptor]\nport = {self.port}\nlog_file = {self.dir / 'interceptor.log'}\n")
        credits = _credits_config(self.dir, int(os.environ["JC_TEST_REDIS_PORT"]))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT),
               "HOME": str(self.dir), "LANG": "C.UTF-8"}
        with open(self.dir / "out.log", "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jasmin_credits.interceptors.interceptord",
                 "-c", str(self.dir / "interceptor.cfg"), "--credits-config", str(credits),
                 "--lock-file", str(self.dir / "interceptord")],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(self._stop)
        try:
            wait_for_port(self.port, timeout=60)
        except TimeoutError:
            self.fail((self.dir / "out.log").read_text())

    def _stop(self):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def test_binds_loopback_by_default(self):
        """Without a ``bind`` key the interceptor PB listens on 127.0.0.1 only."""
        self.assertEqual(_listening_addresses(self.port), {"0100007F"})

    async def test_wrong_password_refused(self):
        """Jasmin's own PB client with a wrong password is refused; the right one logs in."""
        proxy = InterceptorPBProxy()
        with self.assertRaises(ConnectError) as refused:
            await proxy.connect("127.0.0.1", self.port, "iadmin", "wrong")
        self.assertIn("Authentication error", str(refused.exception))
        self.assertFalse(proxy.isConnected)
        proxy.disconnect()
        good = InterceptorPBProxy()
        await good.connect("127.0.0.1", self.port, "iadmin", "ipwd")
        self.assertTrue(good.isConnected)
        answer = await good.run_script(MTInterceptorScript('"""pass"""'),
                                       routable(smpp_message(destination="33612345678")))
        self.assertIsInstance(answer, bytes | dict)
        good.disconnect()


class RedisPasswordTests(TestCase):
    """``redis.password`` authenticates every connection of the runtime."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="jc-sec-redis-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis = RedisServer(self.dir / "redis", appendonly=False,
                                 extra_args=("--requirepass", "s3cret-pw"))
        self.redis.start()
        self.addCleanup(self.redis.stop)

    async def _runtime(self, password: str) -> CreditsRuntime:
        path = _credits_config(self.dir, self.redis.port, password=password)
        runtime = CreditsRuntime(load_config(path))
        await runtime.start()
        self.addCleanup(runtime.stop)
        return runtime

    async def test_right_password_charges(self):
        """With the right password a top-up and a charge go through."""
        runtime = await self._runtime("s3cret-pw")
        await runtime.store.top_up("alice", 10_000, op_id="sec-1", actor="test")
        decision = await runtime.charger.charge(
            routable(smpp_message(destination="33612345678")))
        self.assertTrue(decision.accepted and decision.charged, decision)
        wallet = await runtime.store.wallet("alice")
        self.assertEqual((wallet.balance, wallet.reserved), (10_000, 800))

    async def test_wrong_password_refuses_as_store_unavailable(self):
        """A wrong password makes charging refuse with store_unavailable, not crash, and is
        said once in the log (not as an "Unhandled error in Deferred" traceback)."""
        with self.assertLogs("jasmin-credits.redis", "ERROR") as logged:
            runtime = await self._runtime("not-the-password")
            decision = await runtime.charger.charge(
                routable(smpp_message(destination="33612345678")))
        self.assertEqual(decision.refusal, Refusal.STORE_UNAVAILABLE)
        self.assertIn("refused the connection set-up", logged.output[0])
        self.assertIn("check redis.password", logged.output[0])


# Files allowed to call pickle.loads, and what they unpickle: data Jasmin hands over
# (PB arguments from jasmind, AMQP message bodies and headers), never Redis replies.
PICKLE_LOADS_ALLOWED = {
    "interceptors/interceptord.py": "the routable jasmind sends over the authenticated PB",
    "interceptors/prehook.py": "the interceptor answer jasmind passes inside its own process",
}


def test_no_unpickling_of_redis_data():
    """``pickle.loads``/``load`` appear only where Jasmin hands the data over; AMQP bodies go
    through settlement's restricted unpickler, and no module both reads Redis and unpickles."""
    loads = re.compile(r"\b(c?[pP]ickle\.loads?|_?[A-Za-z]*Unpickler\b)\s*\(")
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        calls = [m.group(1) for m in loads.finditer(text)]
        if not calls:
            continue
        if name == "settlement.py":
            # The only unpickling there is the allow-listed _PduUnpickler on AMQP bodies.
            assert set(calls) <= {"_PduUnpickler", "pickle.Unpickler"}, calls
            assert "class _PduUnpickler(pickle.Unpickler)" in text
            assert "def find_class" in text
            continue
        assert name in PICKLE_LOADS_ALLOWED, f"{name} unpickles: {calls}"
        assert not re.search(r"\b(store|redis)\b.*\n?.*pickle\.loads", text), name


def _protocol4_call(module: str, name: str, arg: bytes) -> bytes:
    """A protocol-4 pickle calling ``module`` + ``name`` (STACK_GLOBAL) with ``arg``."""

    def text(value: str) -> bytes:  # SHORT_BINUNICODE
        data = value.encode()
        return b"\x8c" + bytes([len(data)]) + data

    return (b"\x80\x04" + text(module) + text(name) + b"\x93"
            + b"C" + bytes([len(arg)]) + arg + b"\x85R.")  # SHORT_BINBYTES, TUPLE1, REDUCE


def test_restricted_unpickler_refuses_dotted_names():
    """Protocol 4 resolves a dotted name attribute by attribute: ``jasmin.queues.factory`` +
    ``sys.exit`` is Jasmin's imported ``sys.exit``, ``jasmin.managers.content`` +
    ``pickle.loads`` an unrestricted unpickler. Both are refused, nothing is called."""
    import pickle

    from jasmin_credits.settlement import load_submit_sm

    inner = pickle.dumps(os.getcwd)
    for module, name, arg in (("jasmin.queues.factory", "sys.exit", b"bye"),
                              ("jasmin.managers.content", "pickle.loads", inner),
                              ("smpp.pdu.operations", "SubmitSM.__init__", b"")):
        try:
            load_submit_sm(_protocol4_call(module, name, arg))
        except ValueError as error:
            assert f"refusing to load {module}.{name}" in str(error), error
        else:
            raise AssertionError(f"{module}.{name} was loaded")


def test_smpp_and_jasmin_classes_load_as_inert_stand_ins():
    """No smpp/jasmin code runs while a body loads: called with no arguments, Jasmin's
    ``User`` would raise TypeError; its stand-in does not, and is no SubmitSM. A real
    tagged SubmitSM chain loads as stand-ins whose attributes and tag read as pickled."""
    import pickle

    from jasmin.routing.jasminApi import User
    from smpp.pdu.operations import SubmitSM

    from jasmin_credits.settlement import InertObject, load_submit_sm, read_tag, tag_pdu
    from tests.jasmin_objects import http_message

    try:
        User()  # the real class's code refuses this call
    except TypeError:
        pass
    else:
        raise AssertionError("User() ran without arguments: pick another class")
    empty_call = b"\x80\x04\x8c\x18jasmin.routing.jasminApi\x8c\x04User\x93)R."
    try:
        load_submit_sm(empty_call)
    except ValueError as error:
        assert str(error) == "the body is a User, not a SubmitSM", error
    else:
        raise AssertionError("a User was taken for a SubmitSM")

    pdu = http_message("x" * 400)  # three parts: a nextPdu chain, enums, sets
    tag_pdu(pdu, "alice", "1795000000000-abcdef012345", 3)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        loaded = load_submit_sm(pickle.dumps(pdu, protocol))
        assert isinstance(loaded, InertObject) and not isinstance(loaded, SubmitSM)
        assert read_tag(loaded) == {"uid": "alice", "ref": "1795000000000-abcdef012345",
                                    "parts": 3}
        assert loaded.params["destination_addr"] == pdu.params["destination_addr"]
        assert loaded.nextPdu.nextPdu.params["short_message"] == (
            pdu.nextPdu.nextPdu.params["short_message"])
        last, loaded_last = pdu.nextPdu.nextPdu, loaded.nextPdu.nextPdu
        assert hasattr(loaded_last, "nextPdu") == hasattr(last, "nextPdu")
        assert vars(loaded_last).keys() == vars(last).keys()


def test_restricted_unpickler_refuses_other_globals():
    """Settlement's unpickler refuses a pickle naming any global outside smpp/jasmin."""
    import pickle

    from jasmin_credits.settlement import load_submit_sm

    evil = pickle.dumps(os.system)  # a global: loading it would hand out os.system
    try:
        load_submit_sm(evil)
    except ValueError as error:
        assert "refusing" in str(error)
    else:
        raise AssertionError("os.system was unpickled")
