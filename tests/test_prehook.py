"""The pre-routing hook: live answers, SMPP charging before routing, HTTP /send charging."""

from __future__ import annotations

import pickle

from smpp.pdu.pdu_types import CommandStatus
from smpp.twisted.protocol import DataHandlerResponse
from twisted.trial.unittest import SynchronousTestCase

from jasmin_credits.charging import Decision
from jasmin_credits.config import parse_config
from jasmin_credits.errors import Refusal
from jasmin_credits.interceptors import prehook
from jasmin_credits.interceptors.answer import live_answer

from .jasmin_objects import routable, smpp_message

CONFIG = parse_config({}, "test")


class FakeStore:
    """Records releases."""

    def __init__(self):
        self.released: list[tuple[str, str]] = []

    async def release(self, uid, ref):
        self.released.append((uid, ref))


class FakeCharger:
    """Answers a fixed decision and tags nothing."""

    def __init__(self, decision: Decision):
        self.decision = decision
        self.charged: list = []
        self.store = FakeStore()

    async def charge(self, item):
        self.charged.append(item)
        return self.decision

    def give_back(self, decision):
        return False  # held in Redis, as Charger answers without a lease


class FakeFactory:
    """Jasmin's SMPP server factory: records post-interception calls."""

    def __init__(self, status=CommandStatus.ESME_ROK):
        self.status = status
        self.calls: list = []

    def submit_sm_post_interception(self, *args, **kw):
        self.calls.append((args, kw))
        if args:
            return DataHandlerResponse(status=CommandStatus.ESME_RX_P_APPN)
        return DataHandlerResponse(status=self.status, message_id="m1")


class LiveAnswerTests(SynchronousTestCase):
    def test_unpickles_to_the_same_object_once(self):
        """A live answer unpickles to the routable itself, and only once."""
        item = routable(smpp_message())
        data = live_answer(item)
        self.assertLess(len(data), 120)
        self.assertIs(pickle.loads(data), item)
        self.assertRaises(KeyError, pickle.loads, data)


class SmppHookTests(SynchronousTestCase):
    def hook(self, decision, status=CommandStatus.ESME_ROK):
        factory = FakeFactory(status)
        charger = FakeCharger(decision)
        prehook.install_smpp(factory, charger, CONFIG)
        return factory, charger

    def test_accepted_message_is_routed_as_the_same_object(self):
        """Without an interceptor the message is charged, then routed unchanged."""
        factory, charger = self.hook(Decision(ref="r1"))
        item = routable(smpp_message())
        response = self.successResultOf(
            factory.submit_sm_post_interception(routable=item, system_id="alice", proto=None))
        self.assertEqual(response.status, CommandStatus.ESME_ROK)
        self.assertEqual(charger.charged, [item])
        self.assertEqual(len(factory.calls), 1)
        self.assertIs(factory.calls[0][1]["routable"], item)
        self.assertEqual(charger.store.released, [])

    def test_interceptor_answer_is_charged_too(self):
        """After an operator interceptor let it through, the message is charged."""
        factory, charger = self.hook(Decision(ref="r1"))
        item = routable(smpp_message())
        self.successResultOf(factory.submit_sm_post_interception(
            live_answer(item), system_id="alice", proto=None))
        self.assertEqual(charger.charged, [item])

    def test_refusal_goes_through_jasmin_with_configured_status(self):
        """A refused message gets the configured SMPP status and is never routed."""
        factory, _ = self.hook(Decision(Refusal.INSUFFICIENT_CREDIT))
        self.successResultOf(factory.submit_sm_post_interception(
            routable=routable(smpp_message()), system_id="alice", proto=None))
        [(args, kw)] = factory.calls
        self.assertEqual(args[0]["smpp_status"], 0x65)
        self.assertNotIn("routable", kw)

    def test_jasmin_failure_after_hold_releases_it(self):
        """Jasmin fails the message (no route): the hold of a single message is released."""
        factory, charger = self.hook(Decision(ref="r1"), CommandStatus.ESME_RINVDSTADR)
        self.successResultOf(factory.submit_sm_post_interception(
            routable=routable(smpp_message()), system_id="alice", proto=None))
        self.assertEqual(charger.store.released, [("alice", "r1")])

    def test_script_failures_pass_to_jasmin_uncharged(self):
        """A failed script (False) is Jasmin's to answer; nothing is charged."""
        factory, charger = self.hook(Decision(ref="r1"))
        factory.submit_sm_post_interception(False)
        self.assertEqual(charger.charged, [])
        self.assertEqual(factory.calls, [((False,), {})])


class Table:
    """An interception table with no match, or with ``found``."""

    def __init__(self, found=None):
        self.found = found

    def getInterceptorFor(self, item):  # noqa: N802
        return self.found


class Router:
    def __init__(self, table):
        self.table = table
        self.other = "kept"

    def getMTInterceptionTable(self):  # noqa: N802
        return self.table


class Send:
    def __init__(self, router):
        self.RouterPB = router
        self.interceptorpb_client = None


class HttpHookTests(SynchronousTestCase):
    def test_send_sees_the_charge_only_marker_without_interceptor(self):
        """/send always finds an interceptor; the marker only charges."""
        send = Send(Router(Table()))
        charger = FakeCharger(Decision(ref="r1"))
        prehook.install_http(send, charger, CONFIG)
        item = routable(smpp_message())
        found = send.RouterPB.getMTInterceptionTable().getInterceptorFor(item)
        self.assertEqual(send.RouterPB.other, "kept")
        answer = self.successResultOf(send.interceptorpb_client.run_script(
            found.getScript(), item))
        self.assertIs(pickle.loads(answer), item)
        self.assertEqual(charger.charged, [item])

    def test_operator_script_refusal_is_not_charged(self):
        """The operator's script runs first; its refusal is answered, nothing charged."""
        client = prehook.PreRoutingHttpClient(FakeCharger(Decision(ref="r1")), CONFIG)
        answer = self.successResultOf(client.run_script("http_status = 403\n",
                                                        routable(smpp_message())))
        self.assertEqual(answer["http_status"], 403)
        self.assertEqual(client.charger.charged, [])

    def test_refusal_answers_configured_http_status(self):
        """A refusal answers the configured HTTP status."""
        client = prehook.PreRoutingHttpClient(
            FakeCharger(Decision(Refusal.INSUFFICIENT_CREDIT)), CONFIG)
        answer = self.successResultOf(client.run_script(prehook.CHARGE_ONLY,
                                                        routable(smpp_message())))
        self.assertEqual(answer["http_status"], 402)


