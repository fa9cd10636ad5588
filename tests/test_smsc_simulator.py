"""The SMSC simulator: binds, answers, error/silent rules, receipts and records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from smpp.pdu import operations
from smpp.pdu.pdu_encoding import PDUEncoder
from smpp.pdu.pdu_types import EsmClass, EsmClassGsmFeatures, EsmClassMode, EsmClassType
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

import jasmin_credits
from jasmin_credits.devservices import free_port, wait_for_port
from jasmin_credits.smsc_simulator import SMSCSimulator
from tests.smpp_client import SmppTestClient

REPO_ROOT = str(Path(jasmin_credits.__file__).resolve().parent.parent)


def _decode_all(data: bytes) -> list:
    import io

    encoder, pdus, stream = PDUEncoder(), [], io.BytesIO(data)
    while stream.tell() < len(data):
        pdus.append(encoder.decode(stream))
    return pdus


class SimulatorProtocolTests(SynchronousTestCase):
    """The simulator driven through a StringTransport and a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.simulator = SMSCSimulator(fail={"3399": "ESME_RSUBMITFAIL"}, silent=["3398"],
                                       dlr_stat={"3397": "UNDELIV"}, dlr_delay=1.0,
                                       reactor=self.clock)
        self.proto = self.simulator.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.encoder = PDUEncoder()

    def send(self, pdu) -> list:
        self.transport.clear()
        self.proto.dataReceived(self.encoder.encode(pdu))
        return _decode_all(self.transport.value())

    def bind(self) -> None:
        [resp] = self.send(operations.BindTransceiver(1, system_id="gw", password="x",
                                                      system_type="", interface_version=0x34))
        self.assertIsInstance(resp, operations.BindTransceiverResp)

    def test_bind_and_submit_ok(self) -> None:
        """Any credentials bind; a submit_sm gets ESME_ROK with a message id and is recorded."""
        self.bind()
        [resp] = self.send(operations.SubmitSM(2, destination_addr="33612345678",
                                               short_message=b"hello"))
        self.assertEqual(resp.status.name, "ESME_ROK")
        self.assertEqual(resp.params["message_id"].decode(), self.simulator.received[0].message_id)
        self.assertEqual(self.simulator.received[0].short_message, b"hello")
        self.assertEqual(self.simulator.received[0].system_id, "gw")

    def test_fail_and_silent_rules(self) -> None:
        """Prefix rules answer an error status or nothing at all."""
        self.bind()
        [resp] = self.send(operations.SubmitSM(2, destination_addr="339912", short_message=b"x"))
        self.assertEqual(resp.status.name, "ESME_RSUBMITFAIL")
        self.assertEqual(self.send(operations.SubmitSM(3, destination_addr="339812",
                                                       short_message=b"x")), [])
        self.assertEqual([r.status for r in self.simulator.received],
                         ["ESME_RSUBMITFAIL", "NO_ANSWER"])

    def test_receipt_after_delay_with_prefix_stat(self) -> None:
        """A requested receipt follows after dlr_delay, with the stat of its prefix."""
        from smpp.pdu.pdu_types import RegisteredDelivery, RegisteredDeliveryReceipt

        self.bind()
        wanted = RegisteredDelivery(RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED)
        self.send(operations.SubmitSM(2, destination_addr="33971", short_message=b"hi",
                                      registered_delivery=wanted))
        self.transport.clear()
        self.clock.advance(0.5)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.5)
        [dlr] = _decode_all(self.transport.value())
        self.assertIsInstance(dlr, operations.DeliverSM)
        self.assertEqual(dlr.params["esm_class"].type, EsmClassType.SMSC_DELIVERY_RECEIPT)
        msgid = self.simulator.received[0].message_id
        self.assertIn(f"id:{msgid} ".encode(), dlr.params["short_message"])
        self.assertIn(b"stat:UNDELIV", dlr.params["short_message"])

    def test_udh_recorded(self) -> None:
        """The UDH of a concatenated part is recorded separately."""
        self.bind()
        udh = b"\x05\x00\x03\x2a\x02\x01"
        esm = EsmClass(EsmClassMode.DEFAULT, EsmClassType.DEFAULT,
                       [EsmClassGsmFeatures.UDHI_INDICATOR_SET])
        self.send(operations.SubmitSM(2, destination_addr="336", short_message=udh + b"part",
                                      esm_class=esm))
        self.assertEqual(self.simulator.received[0].udh, udh)

    def test_unknown_stat_refused(self) -> None:
        """A typo in a receipt stat fails at construction."""
        with self.assertRaises(ValueError):
            SMSCSimulator(dlr_stat={"33": "DELIVERED"}, reactor=self.clock)


@pytest.fixture
def simulator_process(tmp_path):
    """The simulator as a subprocess (as LocalGateway runs it), with a JSON-lines log."""
    port = free_port()
    log = tmp_path / "smsc.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "jasmin_credits.smsc_simulator", "--port", str(port),
         "--log", str(log), "--fail", "3399=ESME_RSUBMITFAIL", "--dlr-stat", "3397=UNDELIV"],
        env={"PYTHONPATH": REPO_ROOT, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=15)
        yield port, log
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_smpplib_client_against_subprocess(simulator_process):
    """A real smpplib client binds, gets OK/error answers and receipts; the log records all."""
    port, log = simulator_process
    client = SmppTestClient(port, "anyone", "anything")
    try:
        ok = client.submit("33612345678", b"hello", registered_delivery=True)
        failed = client.submit("339912345", b"nope")
        undelivered = client.submit("33971234", b"lost", registered_delivery=True)
        client.pump(lambda: len(client.responses) == 3 and len(client.delivered) == 2)
        assert client.response_for(ok).status == 0
        assert client.response_for(failed).status == 0x45  # ESME_RSUBMITFAIL
        stats = sorted(pdu.short_message.split(b"stat:")[1][:7] for pdu in client.delivered)
        assert stats == [b"DELIVRD", b"UNDELIV"]
        ids = {pdu.receipted_message_id for pdu in client.delivered}
        assert client.response_for(ok).message_id in ids
        assert client.response_for(undelivered).message_id in ids
    finally:
        client.close()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["destination_addr"] for row in rows] == ["33612345678", "339912345", "33971234"]
    assert bytes.fromhex(rows[0]["short_message"]) == b"hello"
    assert rows[1]["status"] == "ESME_RSUBMITFAIL"
