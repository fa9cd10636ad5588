"""The simulator's ``--disconnect`` rule, through a StringTransport."""

from __future__ import annotations

from smpp.pdu import operations
from smpp.pdu.pdu_encoding import PDUEncoder
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from jasmin_credits.smsc_simulator import SMSCSimulator, build_parser


def test_disconnect_rule_records_and_aborts_without_answer():
    """The first submit_sm to a --disconnect destination drops the link; a resend is answered."""
    simulator = SMSCSimulator(disconnect=["3397"], reactor=Clock())
    proto = simulator.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    encoder = PDUEncoder()
    proto.dataReceived(encoder.encode(operations.BindTransceiver(
        1, system_id="gw", password="x", system_type="", interface_version=0x34)))
    transport.clear()
    proto.dataReceived(encoder.encode(operations.SubmitSM(2, destination_addr="33971",
                                                          short_message=b"x")))
    assert transport.value() == b""
    assert transport.disconnecting or getattr(transport, "aborting", False)
    assert [r.status for r in simulator.received] == ["DISCONNECTED"]
    again = simulator.buildProtocol(None)
    again.makeConnection(StringTransport())
    again.dataReceived(encoder.encode(operations.SubmitSM(3, destination_addr="33971",
                                                          short_message=b"x")))
    assert [r.status for r in simulator.received] == ["DISCONNECTED", "ESME_ROK"]


def test_disconnect_flag_parses():
    """``--disconnect PREFIX`` is a repeatable command-line flag."""
    args = build_parser().parse_args(["--disconnect", "3397", "--disconnect", "3396"])
    assert args.disconnect == ["3397", "3396"]
