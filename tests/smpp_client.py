"""A blocking SMPP client for tests (smpplib), with deadline-bounded waits instead of sleeps."""

from __future__ import annotations

import select
import time
from typing import Any

import smpplib.client
import smpplib.consts


class SmppTestClient:
    """One bound smpplib session recording every submit_sm_resp and deliver_sm it reads."""

    def __init__(self, port: int, system_id: str, password: str, bind: str = "transceiver",
                 host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.client = smpplib.client.Client(host, port, timeout=timeout,
                                            allow_unknown_opt_params=True)
        self.responses: list[Any] = []
        self.delivered: list[Any] = []
        self.client.set_message_sent_handler(lambda pdu: self.responses.append(pdu))
        self.client.set_message_received_handler(lambda pdu: self.delivered.append(pdu))
        self.client.set_error_pdu_handler(lambda pdu: None)
        self.client.connect()
        getattr(self.client, f"bind_{bind}")(system_id=system_id, password=password)

    def submit(self, destination: str, message: bytes, source: str = "123",
               registered_delivery: bool = False, esm_class: int = 0,
               data_coding: int = 0) -> int:
        """Send one submit_sm; return its sequence number."""
        pdu = self.client.send_message(
            source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr=source,
            dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=destination,
            short_message=message, esm_class=esm_class, data_coding=data_coding,
            registered_delivery=1 if registered_delivery else 0)
        return pdu.sequence

    def pump(self, until: Any, timeout: float = 10.0) -> None:
        """Read PDUs until ``until()`` is true; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met after {timeout}s: "
                                     f"{len(self.responses)} responses, "
                                     f"{len(self.delivered)} deliveries")
            ready, _, _ = select.select([self.client._socket], [], [], min(remaining, 0.5))
            if ready:
                self.client.read_once()

    def response_for(self, sequence: int) -> Any:
        """The submit_sm_resp read for ``sequence``, or None."""
        return next((r for r in self.responses if r.sequence == sequence), None)

    def close(self) -> None:
        """Unbind (best effort) and disconnect."""
        try:
            if self.client.state != smpplib.consts.SMPP_CLIENT_STATE_CLOSED:
                self.client.unbind()
        except Exception:
            pass
        finally:
            self.client.disconnect()
