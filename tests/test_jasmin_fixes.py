"""The 0.11.1 submit_sm_resp correction: applies where needed, is a no-op elsewhere."""

from __future__ import annotations

import logging
import types

from jasmin.managers.listeners import SMPPClientSMListener
from smpp.pdu.operations import SubmitSM, SubmitSMResp
from smpp.pdu.pdu_types import CommandStatus, RegisteredDelivery, RegisteredDeliveryReceipt
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from jasmin_credits import jasmin_fixes


def _released_method():
    """Jasmin's method as released, even if an earlier test or import corrected the class."""
    method = SMPPClientSMListener.__dict__["submit_sm_resp_event"]
    return getattr(method, "__jasmin_credits_original__", method)


class _Broker:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, object]] = []

    def publish(self, exchange, routing_key, content):
        self.published.append((exchange, routing_key, content))
        return defer.succeed(None)


def _listener(cls: type) -> object:
    listener = cls.__new__(cls)
    listener.config = types.SimpleNamespace(submit_error_retrial={}, log_privacy=False,
                                            publish_submit_sm_resp=False)
    listener.submit_retrials = {"m1": 0}
    listener.log = logging.getLogger("test-jasmin-fixes")
    listener.SMPPClientFactory = types.SimpleNamespace(config=types.SimpleNamespace(id="smsc"))
    listener.clearRejectTimer = lambda msgid: None
    listener.ackMessage = lambda message: defer.succeed(None)
    listener.amqpBroker = _Broker()
    return listener


def _message() -> object:
    content = types.SimpleNamespace(properties={"message-id": "m1", "headers": {},
                                                "priority": 1, "reply-to": "submit.sm.resp.smsc"})
    return types.SimpleNamespace(content=content, routing_key="submit.sm.smsc")


def _response(status: CommandStatus = CommandStatus.ESME_ROK):
    request = SubmitSM(1, source_addr="123", destination_addr="33612345678",
                       short_message=b"hello", registered_delivery=RegisteredDelivery(
                           RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED))
    if status == CommandStatus.ESME_ROK:
        response = SubmitSMResp(1, message_id="abc123")
    else:
        response = SubmitSMResp(1, status=status)
    return types.SimpleNamespace(request=request, response=response)


def _class_with(method) -> type:
    return type("Listener", (), {"submit_sm_resp_event": method})


class SubmitSmRespFixTests(SynchronousTestCase):
    """jasmin_fixes.fix_submit_sm_resp_event on copies of Jasmin's listener class."""

    def test_released_method_has_the_bug(self) -> None:
        """Jasmin 0.11.1 as released publishes no dlr.submit_sm_resp (the bug is real)."""
        self.assertTrue(jasmin_fixes.needs_submit_sm_resp_fix(_released_method()))
        listener = _listener(_class_with(_released_method()))
        self.successResultOf(listener.submit_sm_resp_event(_response(), _message()))
        self.assertEqual(listener.amqpBroker.published, [])

    def test_fixed_method_publishes_ok_event(self) -> None:
        """After the fix an ESME_ROK response publishes dlr.submit_sm_resp with smpp_msgid."""
        cls = _class_with(_released_method())
        self.assertTrue(jasmin_fixes.fix_submit_sm_resp_event(cls))
        listener = _listener(cls)
        self.successResultOf(listener.submit_sm_resp_event(_response(), _message()))
        [(exchange, key, content)] = listener.amqpBroker.published
        self.assertEqual((exchange, key), ("messaging", "dlr.submit_sm_resp"))
        self.assertEqual(content.body, "ESME_ROK")
        self.assertEqual(content.properties["message-id"], "m1")
        self.assertEqual(content.properties["headers"]["smpp_msgid"], "ABC123")

    def test_fixed_method_publishes_error_event(self) -> None:
        """An error response (where 0.11.1 hit UnboundLocalError) is published too."""
        cls = _class_with(_released_method())
        jasmin_fixes.fix_submit_sm_resp_event(cls)
        listener = _listener(cls)
        self.successResultOf(listener.submit_sm_resp_event(
            _response(CommandStatus.ESME_RSUBMITFAIL), _message()))
        [(_, key, content)] = listener.amqpBroker.published
        self.assertEqual((key, content.body), ("dlr.submit_sm_resp", "ESME_RSUBMITFAIL"))

    def test_fix_is_idempotent(self) -> None:
        """Applying twice replaces the method once."""
        cls = _class_with(_released_method())
        self.assertTrue(jasmin_fixes.fix_submit_sm_resp_event(cls))
        fixed = cls.__dict__["submit_sm_resp_event"]
        self.assertFalse(jasmin_fixes.fix_submit_sm_resp_event(cls))
        self.assertIs(cls.__dict__["submit_sm_resp_event"], fixed)

    def test_noop_on_a_correct_method(self) -> None:
        """A method without the bug (a fixed Jasmin) is left alone."""

        def submit_sm_resp_event(self, r, amqpMessage):  # noqa: N803 - Jasmin's signature
            return r.response

        cls = _class_with(submit_sm_resp_event)
        self.assertFalse(jasmin_fixes.fix_submit_sm_resp_event(cls))
        self.assertIs(cls.__dict__["submit_sm_resp_event"], submit_sm_resp_event)

    def test_apply_on_installed_jasmin(self) -> None:
        """apply() leaves the installed listener corrected; it applies only on 0.11.1."""
        jasmin_fixes.apply()
        method = SMPPClientSMListener.__dict__["submit_sm_resp_event"]
        self.assertFalse(jasmin_fixes.needs_submit_sm_resp_fix(method))
        if jasmin_fixes.jasmin_version() == "0.11.1":
            self.assertTrue(getattr(method, "__jasmin_credits_fixed__", False))


class StockJasmindWarningTests(SynchronousTestCase):
    """What the drop-in interceptord says at start about the jasmind that calls it."""

    def test_warns_while_the_released_method_has_the_bug(self):
        warning = jasmin_fixes.stock_jasmind_warning(_class_with(_released_method()))
        self.assertIn("dlr.submit_sm_resp", warning)
        self.assertIn("jasmin-credits-jasmind", warning)

    def test_silent_once_jasmin_is_fixed(self):
        cls = _class_with(_released_method())
        jasmin_fixes.fix_submit_sm_resp_event(cls)
        self.assertIsNone(jasmin_fixes.stock_jasmind_warning(cls))
