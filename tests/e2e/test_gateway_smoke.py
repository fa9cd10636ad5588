"""Smoke tests of the whole local gateway: SMPP and HTTP in, the simulator out, DLRs back."""

from __future__ import annotations

import urllib.parse
import urllib.request

import pytest
from twisted.internet import reactor
from twisted.internet.protocol import ClientCreator
from twisted.trial.unittest import TestCase
from txamqp.client import TwistedDelegate
from txamqp.protocol import AMQClient
from txamqp.queue import Empty

from jasmin_credits.amqp import default_spec_path
from tests.e2e.conftest import wait_received

UDHI = 0x40


def test_smpp_message_reaches_smsc(gateway, smpp_client, destination):
    """A submit_sm from alice is accepted and reaches the SMSC unchanged."""
    client = smpp_client()
    seq = client.submit(destination, b"hello smsc")
    client.pump(lambda: client.response_for(seq) is not None)
    assert client.response_for(seq).status == 0
    [row] = wait_received(gateway, destination)
    assert row["short_message"] == b"hello smsc"
    assert row["status"] == "ESME_ROK"


def test_delivery_receipt_reaches_client(gateway, smpp_client, destination):
    """With registered_delivery the client gets a DELIVRD receipt (needs the 0.11.1 fix)."""
    client = smpp_client()
    seq = client.submit(destination, b"receipt please", registered_delivery=True)
    client.pump(lambda: client.response_for(seq) is not None and client.delivered)
    msgid = client.response_for(seq).message_id
    [receipt] = client.delivered
    assert receipt.receipted_message_id == msgid or msgid in receipt.short_message
    assert b"stat:DELIVRD" in receipt.short_message


def test_three_part_udh_message(gateway, smpp_client, destination):
    """A 3-part UDH message reaches the SMSC as 3 submit_sm, each with its UDH."""
    client = smpp_client()
    parts = [bytes([5, 0, 3, 0x2A, 3, n]) + f"part {n} ".encode() * 10 for n in (1, 2, 3)]
    seqs = [client.submit(destination, part, esm_class=UDHI) for part in parts]
    client.pump(lambda: all(client.response_for(s) is not None for s in seqs))
    assert [client.response_for(s).status for s in seqs] == [0, 0, 0]
    rows = wait_received(gateway, destination, count=3)
    assert sorted(row["udh"] for row in rows) == sorted(part[:6] for part in parts)


def test_http_send(gateway, destination):
    """The HTTP API /send accepts alice's message and it reaches the SMSC."""
    query = urllib.parse.urlencode({"username": "alice", "password": "alicepwd",
                                    "to": destination, "content": "hello http"})
    with urllib.request.urlopen(f"{gateway.http_url}/send?{query}", timeout=10) as response:
        body = response.read().decode()
    assert response.status == 200 and body.startswith("Success"), body
    [row] = wait_received(gateway, destination)
    assert row["short_message"] == b"hello http"


class AmqpEventTests(TestCase):
    """Our own AMQP consumer sees Jasmin's events (in the reactor, txAMQP3 from Jasmin)."""

    timeout = 60

    @pytest.fixture(autouse=True)
    def _gateway(self, gateway):
        self.gateway = gateway

    async def _consumer(self, routing_key: str):
        delegate = TwistedDelegate()
        client = await ClientCreator(reactor, AMQClient, delegate=delegate, vhost="/",
                                     spec=_spec()).connectTCP("127.0.0.1",
                                                              self.gateway.amqp_port, timeout=10)
        self.addCleanup(client.transport.loseConnection)
        await client.authenticate("guest", "guest")
        channel = await client.channel(1)
        await channel.channel_open()
        # Exactly Jasmin's declaration, or the broker refuses it.
        await channel.exchange_declare(exchange="messaging", type="topic")
        declared = await channel.queue_declare(exclusive=True, auto_delete=True)
        await channel.queue_bind(queue=declared.queue, exchange="messaging",
                                 routing_key=routing_key)
        await channel.basic_consume(queue=declared.queue, no_ack=True, consumer_tag="jc-test")
        return await client.queue("jc-test")

    async def test_submit_sm_resp_event_published(self) -> None:
        """dlr.submit_sm_resp is published with ESME_ROK and the upstream id (the fix)."""
        queue = await self._consumer("dlr.submit_sm_resp")
        destination = "33699000001"
        query = urllib.parse.urlencode({"username": "alice", "password": "alicepwd",
                                        "to": destination, "content": "amqp"})
        from twisted.web.client import Agent, readBody

        response = await Agent(reactor, connectTimeout=10).request(
            b"GET", f"{self.gateway.http_url}/send?{query}".encode())
        body = (await readBody(response)).decode()
        self.assertTrue(body.startswith("Success"), body)
        msgid = body.split('"')[1]
        while True:
            try:
                message = await queue.get(timeout=15)
            except Empty:
                self.fail("no dlr.submit_sm_resp within 15 s")
            if message.content.properties["message-id"] == msgid:
                break
        self.assertEqual(message.content.body, b"ESME_ROK")
        smpp_msgid = message.content.properties["headers"]["smpp_msgid"]
        [row] = wait_received(self.gateway, destination)
        self.assertEqual(smpp_msgid, row["message_id"].upper().lstrip("0"))


_SPEC = []


def _spec():
    """The AMQP spec, parsed once."""
    if not _SPEC:
        import txamqp.spec

        _SPEC.append(txamqp.spec.load(default_spec_path()))
    return _SPEC[0]


