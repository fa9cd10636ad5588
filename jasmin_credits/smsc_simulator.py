"""A scriptable SMPP server standing in for an operator's SMSC in development and tests.

It accepts every bind (any credentials; transceiver, transmitter or receiver), answers
``enquire_link`` and ``unbind``, and answers each ``submit_sm`` according to rules keyed on the
destination's prefix (longest prefix wins):

* ``fail={"3399": "ESME_RSUBMITFAIL"}``: answer that error status;
* ``silent=["3398"]``: never answer (the client times out);
* ``disconnect=["3396"]``: the first submit_sm to each such destination is recorded,
  unanswered, and drops the connection (a resend is answered as usual);
* ``dlr_stat={"3397": "UNDELIV"}``: the stat of the delivery receipt (default ``DELIVRD``).

Everything else gets ``ESME_ROK`` and a fresh message id. When ``registered_delivery`` asks for
a receipt, a ``deliver_sm`` with esm_class "SMSC delivery receipt", the TLVs
``receipted_message_id``/``message_state`` and the classic text
``id:<msgid> sub:001 dlvrd:001 submit date:... done date:... stat:DELIVRD err:000 text:...``
follows after ``dlr_delay`` seconds, on the same connection if it can receive, else on another
receiving bind.

Every ``submit_sm`` is recorded in :attr:`SMSCSimulator.received` (and, optionally, as one JSON
line in a log file for out-of-process use). Run it with ``python -m jasmin_credits.smsc_simulator``
or the ``jasmin-credits-smsc`` console script.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smpp.pdu import operations
from smpp.pdu.error import PDUParseError
from smpp.pdu.pdu_encoding import PDUEncoder
from smpp.pdu.pdu_types import (
    CommandStatus,
    EsmClass,
    EsmClassGsmFeatures,
    EsmClassMode,
    EsmClassType,
    MessageState,
    RegisteredDeliveryReceipt,
)
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python import log as twisted_log

#: Receipt ``stat`` texts and the ``message_state`` TLV each one maps to.
STAT_STATES: dict[str, MessageState] = {
    "DELIVRD": MessageState.DELIVERED,
    "EXPIRED": MessageState.EXPIRED,
    "DELETED": MessageState.DELETED,
    "UNDELIV": MessageState.UNDELIVERABLE,
    "ACCEPTD": MessageState.ACCEPTED,
    "UNKNOWN": MessageState.UNKNOWN,
    "REJECTD": MessageState.REJECTED,
    "ENROUTE": MessageState.ENROUTE,
}

_HEADER_LEN = 16
_MAX_PDU_LEN = 64 * 1024
_BIND_RESPONSES = {
    operations.BindTransceiver: operations.BindTransceiverResp,
    operations.BindTransmitter: operations.BindTransmitterResp,
    operations.BindReceiver: operations.BindReceiverResp,
}


@dataclass
class ReceivedSubmit:
    """One ``submit_sm`` as the simulator saw it (text fields decoded as latin-1)."""

    system_id: str
    source_addr: str
    destination_addr: str
    short_message: bytes
    udh: bytes | None
    esm_class_udhi: bool
    data_coding: int
    registered_delivery: bool
    status: str
    message_id: str | None
    received_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """One JSON line; bytes are written as hex strings."""
        data: dict[str, Any] = asdict(self)
        data["short_message"] = self.short_message.hex()
        data["udh"] = self.udh.hex() if self.udh is not None else None
        return json.dumps(data, sort_keys=True)


@dataclass
class SentReceipt:
    """One delivery receipt the simulator sent."""

    message_id: str
    stat: str
    destination_addr: str


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _longest_prefix(rules: Mapping[str, Any], destination: str) -> str | None:
    best = None
    for prefix in rules:
        if destination.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def _command_status(value: CommandStatus | str | int) -> CommandStatus:
    if isinstance(value, CommandStatus):
        return value
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        for status in CommandStatus:
            if status.value == number:
                return status
        raise ValueError(f"unknown SMPP command status {value!r}")
    try:
        return CommandStatus[value]
    except KeyError:
        raise ValueError(f"unknown SMPP command status {value!r}") from None


class SMSCProtocol(Protocol):
    """One SMPP session with the simulator; framing by ``command_length``."""

    factory: SMSCSimulator

    def __init__(self) -> None:
        self._buffer = b""
        self._seq = 0
        self.system_id: str | None = None
        self.can_receive = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        """Disable Nagle: tests measure latency through us."""
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # pragma: no cover - not a TCP transport
            pass
        self.factory.connections.add(self)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        """Forget the session."""
        self.factory.connections.discard(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        """Split the stream into PDUs and handle each one."""
        self._buffer += data
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:4], "big")
            if length < _HEADER_LEN or length > _MAX_PDU_LEN:
                self.transport.loseConnection()
                return
            if len(self._buffer) < length:
                return
            raw, self._buffer = self._buffer[:length], self._buffer[length:]
            self._handle_raw(raw)

    def next_seq(self) -> int:
        """A sequence number for a request we send."""
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    def send(self, pdu: Any) -> None:
        """Encode and write one PDU."""
        self.transport.write(self.factory.encoder.encode(pdu))

    def _handle_raw(self, raw: bytes) -> None:
        try:
            pdu = self.factory.encoder.decode(io.BytesIO(raw))
        except PDUParseError as error:
            seq = int.from_bytes(raw[12:16], "big") or None
            self.send(operations.GenericNack(seq, status=error.status))
            return
        handler = getattr(self, f"on_{type(pdu).__name__}", None)
        if handler is not None:
            handler(pdu)
        elif isinstance(pdu, operations.PDURequest):
            self.send(operations.GenericNack(pdu.seqNum, status=CommandStatus.ESME_RINVCMDID))

    def _bind(self, pdu: Any) -> None:
        self.system_id = _text(pdu.params.get("system_id"))
        self.can_receive = not isinstance(pdu, operations.BindTransmitter)
        self.send(_BIND_RESPONSES[type(pdu)](pdu.seqNum, system_id=self.factory.system_id))

    on_BindTransceiver = on_BindTransmitter = on_BindReceiver = _bind  # noqa: N815

    def on_EnquireLink(self, pdu: Any) -> None:  # noqa: N802
        """Keep-alive."""
        self.send(operations.EnquireLinkResp(pdu.seqNum))

    def on_Unbind(self, pdu: Any) -> None:  # noqa: N802
        """Answer and close."""
        self.send(operations.UnbindResp(pdu.seqNum))
        self.transport.loseConnection()

    def on_SubmitSM(self, pdu: Any) -> None:  # noqa: N802
        """Record the message and answer according to the rules."""
        self.factory.handle_submit(self, pdu)


class SMSCSimulator(Factory):
    """The simulator: a Twisted server factory plus its rules and records.

    :param fail: destination prefix → SMPP status (name, number or ``CommandStatus``).
    :param silent: destination prefixes whose ``submit_sm`` is never answered.
    :param disconnect: destination prefixes whose first ``submit_sm`` per destination
        aborts the connection (unanswered; recorded with status ``DISCONNECTED``).
    :param dlr_stat: destination prefix → receipt stat (``DELIVRD``, ``UNDELIV``, ...).
    :param default_stat: receipt stat when no ``dlr_stat`` prefix matches.
    :param dlr_delay: seconds between the ``submit_sm_resp`` and the receipt.
    :param log_path: append one JSON line per received ``submit_sm`` to this file.
    :param reactor: provides ``listenTCP`` and ``callLater`` (the seam for tests).
    """

    protocol = SMSCProtocol

    def __init__(
        self,
        fail: Mapping[str, CommandStatus | str | int] | None = None,
        silent: Iterable[str] = (),
        dlr_stat: Mapping[str, str] | None = None,
        default_stat: str = "DELIVRD",
        dlr_delay: float = 0.0,
        log_path: str | Path | None = None,
        system_id: str = "jcsim",
        reactor: Any = None,
        disconnect: Iterable[str] = (),
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor: IReactorTCP | IReactorTime = reactor
        self.fail = {prefix: _command_status(status) for prefix, status in (fail or {}).items()}
        self.silent = {prefix: True for prefix in silent}
        self.disconnect = {prefix: True for prefix in disconnect}
        self._dropped: set[str] = set()
        self.dlr_stat = dict(dlr_stat or {})
        for stat in [default_stat, *self.dlr_stat.values()]:
            if stat not in STAT_STATES:
                raise ValueError(f"unknown receipt stat {stat!r}; use one of {sorted(STAT_STATES)}")
        self.default_stat = default_stat
        self.dlr_delay = dlr_delay
        self.log_path = Path(log_path) if log_path else None
        self.system_id = system_id
        self.encoder = PDUEncoder()
        self.connections: set[SMSCProtocol] = set()
        #: Every ``submit_sm`` received, in order.
        self.received: list[ReceivedSubmit] = []
        #: Every delivery receipt sent, in order.
        self.receipts: list[SentReceipt] = []
        self.port: Any = None
        self._pending: set[Any] = set()

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        """Start listening; return the port number (``port=0`` picks a free one)."""
        self.port = self.reactor.listenTCP(port, self, interface=interface)
        return self.port.getHost().port

    def stop(self) -> defer.Deferred:
        """Stop listening, cancel pending receipts and drop every session."""
        for call in list(self._pending):
            if call.active():
                call.cancel()
        self._pending.clear()
        for connection in list(self.connections):
            connection.transport.abortConnection()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)

    def handle_submit(self, connection: SMSCProtocol, pdu: Any) -> None:
        """Apply the rules to one ``submit_sm`` received on ``connection``."""
        params = pdu.params
        destination = _text(params.get("destination_addr"))
        message = params.get("short_message") or params.get("message_payload") or b""
        if isinstance(message, str):
            message = message.encode("latin-1")
        esm_class = params.get("esm_class")
        udhi = bool(esm_class and EsmClassGsmFeatures.UDHI_INDICATOR_SET in esm_class.gsmFeatures)
        udh = message[: message[0] + 1] if udhi and message else None
        receipt = getattr(params.get("registered_delivery"), "receipt", None)
        wants_receipt = receipt is not None and receipt != (
            RegisteredDeliveryReceipt.NO_SMSC_DELIVERY_RECEIPT_REQUESTED)
        data_coding = params.get("data_coding")
        coding = getattr(getattr(data_coding, "schemeData", None), "value", 0)
        dropping = (_longest_prefix(self.disconnect, destination) is not None
                    and destination not in self._dropped)
        if dropping:
            self._dropped.add(destination)
        silent = dropping or _longest_prefix(self.silent, destination) is not None
        failing = _longest_prefix(self.fail, destination)
        status = self.fail[failing] if failing is not None else CommandStatus.ESME_ROK
        message_id = str(uuid.uuid4()) if status == CommandStatus.ESME_ROK and not silent else None
        record = ReceivedSubmit(
            system_id=connection.system_id or "",
            source_addr=_text(params.get("source_addr")),
            destination_addr=destination,
            short_message=message,
            udh=udh,
            esm_class_udhi=udhi,
            data_coding=int(coding) if isinstance(coding, int) else 0,
            registered_delivery=wants_receipt,
            status="DISCONNECTED" if dropping else "NO_ANSWER" if silent else status.name,
            message_id=message_id,
        )
        self._record(record)
        if dropping:
            connection.transport.abortConnection()
            return
        if silent:
            return
        if message_id is None:
            connection.send(operations.SubmitSMResp(pdu.seqNum, status=status))
            return
        connection.send(operations.SubmitSMResp(pdu.seqNum, message_id=message_id))
        if wants_receipt:
            prefix = _longest_prefix(self.dlr_stat, destination)
            stat = self.dlr_stat[prefix] if prefix is not None else self.default_stat
            if (receipt == RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED_FOR_FAILURE
                    and stat == "DELIVRD"):
                return
            call = self.reactor.callLater(self.dlr_delay, self._send_receipt, connection, record,
                                          stat, message)
            self._pending.add(call)

    def _record(self, record: ReceivedSubmit) -> None:
        self.received.append(record)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as log_file:
                log_file.write(record.to_json() + "\n")

    def _receiver_for(self, connection: SMSCProtocol) -> SMSCProtocol | None:
        if connection.can_receive and connection in self.connections:
            return connection
        for other in self.connections:
            if other.can_receive and other.system_id == connection.system_id:
                return other
        return None

    def _send_receipt(self, connection: SMSCProtocol, record: ReceivedSubmit, stat: str,
                      message: bytes) -> None:
        self._pending = {call for call in self._pending if call.active()}
        target = self._receiver_for(connection)
        if target is None or record.message_id is None:
            return
        stamp = time.strftime("%y%m%d%H%M", time.gmtime())
        delivered = "001" if stat == "DELIVRD" else "000"
        error = "000" if stat == "DELIVRD" else "001"
        text = message[len(record.udh or b""):][:20]
        body = (f"id:{record.message_id} sub:001 dlvrd:{delivered} submit date:{stamp} "
                f"done date:{stamp} stat:{stat} err:{error} text:").encode() + text
        target.send(operations.DeliverSM(
            target.next_seq(),
            source_addr=record.destination_addr,
            destination_addr=record.source_addr,
            esm_class=EsmClass(EsmClassMode.DEFAULT, EsmClassType.SMSC_DELIVERY_RECEIPT),
            receipted_message_id=record.message_id,
            message_state=STAT_STATES[stat],
            short_message=body,
        ))
        self.receipts.append(SentReceipt(record.message_id, stat, record.destination_addr))


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        prefix, sep, result = value.partition("=")
        if not sep or not prefix or not result:
            raise SystemExit(f"{option} expects PREFIX=VALUE, got {value!r}")
        pairs[prefix] = result
    return pairs


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``jasmin-credits-smsc``."""
    parser = argparse.ArgumentParser(prog="jasmin-credits-smsc", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=2776, help="port to listen on (0 = any)")
    parser.add_argument("--fail", action="append", default=[], metavar="PREFIX=STATUS",
                        help="answer STATUS (e.g. ESME_RSUBMITFAIL) for destinations with PREFIX")
    parser.add_argument("--silent", action="append", default=[], metavar="PREFIX",
                        help="never answer submit_sm for destinations with PREFIX")
    parser.add_argument("--disconnect", action="append", default=[], metavar="PREFIX",
                        help="drop the connection on the first submit_sm to each destination "
                             "with PREFIX")
    parser.add_argument("--dlr-stat", action="append", default=[], metavar="PREFIX=STAT",
                        help="receipt stat (DELIVRD, UNDELIV, EXPIRED, ...) for PREFIX")
    parser.add_argument("--default-stat", default="DELIVRD", help="receipt stat otherwise")
    parser.add_argument("--dlr-delay", type=float, default=0.0, help="seconds before a receipt")
    parser.add_argument("--log", default=None, help="append one JSON line per submit_sm here")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until SIGINT/SIGTERM."""
    from twisted.internet import reactor

    args = build_parser().parse_args(argv)
    try:
        simulator = SMSCSimulator(
            fail=_pairs(args.fail, "--fail"),
            silent=args.silent,
            disconnect=args.disconnect,
            dlr_stat=_pairs(args.dlr_stat, "--dlr-stat"),
            default_stat=args.default_stat,
            dlr_delay=args.dlr_delay,
            log_path=args.log,
        )
    except ValueError as error:
        print(f"jasmin-credits-smsc: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    twisted_log.startLogging(sys.stderr, setStdout=False)
    port = simulator.listen(args.port, args.host)
    print(f"SMSC simulator listening on {args.host}:{port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
