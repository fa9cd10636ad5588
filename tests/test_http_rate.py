"""``GET /rate``: Jasmin's real ``Rate`` resource wrapped by ours, on a listening site."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

from jasmin.protocols.http.configs import HTTPApiConfig
from jasmin.protocols.http.endpoints.rate import Rate
from jasmin.protocols.http.stats import HttpAPIStatsCollector
from jasmin.routing.InterceptionTables import MTInterceptionTable
from jasmin.routing.jasminApi import SmppClientConnector
from jasmin.routing.Routes import DefaultRoute
from jasmin.routing.RoutingTables import MTRoutingTable
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from jasmin_credits.http_rate import CreditRate, install_rate
from jasmin_credits.parts import count_text
from jasmin_credits.pricing import Pricer

from .test_jcli_credit import FakeRouter, cards


class RoutingRouter(FakeRouter):
    """FakeRouter with the interception and routing tables Jasmin's /rate consults."""

    def __init__(self) -> None:
        super().__init__()
        self.routes = MTRoutingTable()
        self.routes.add(DefaultRoute(SmppClientConnector("smsc")), 0)

    def getMTInterceptionTable(self):  # noqa: N802 - Jasmin API
        return MTInterceptionTable()

    def getMTRoutingTable(self):  # noqa: N802 - Jasmin API
        return self.routes


class QuoteRuntime:
    """The attributes of the credits runtime that /rate reads."""

    decimals = 4
    display_decimals = 2

    def __init__(self) -> None:
        self.pricer = Pricer(cards(), "world")


class RateEndpointTests(TestCase):
    def setUp(self) -> None:
        root = Resource()
        root.putChild(b"rate", Rate(HTTPApiConfig(), RoutingRouter(),
                                    HttpAPIStatsCollector().get(),
                                    logging.getLogger("jasmin-http-api-test"), None))
        self.wrapper = install_rate(root, QuoteRuntime())
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    async def rate(self, **args: str) -> tuple[int, dict]:
        query = urlencode({"username": "alice", "password": "alicepwd",
                           "to": "33612345678", **args})
        response = await Agent(reactor).request(b"GET", f"{self.base}/rate?{query}".encode())
        body = await readBody(response)
        return response.code, json.loads(body)

    async def assert_quote(self, parts: int, encoding: str = "gsm7", **args: str) -> None:
        code, answer = await self.rate(**args)
        self.assertEqual(code, 200, answer)
        credits = answer["credits"]
        self.assertEqual((credits["parts"], credits["encoding"]), (parts, encoding), args)
        self.assertEqual(answer["submit_sm_count"], parts, args)
        self.assertEqual(credits["unit_price"], "0.9000")
        self.assertEqual(credits["total"], f"{parts * 9000 // 10000}.{parts * 9000 % 10000:04d}")

    def test_installed_over_jasmins_rate(self):
        """install_rate puts our wrapper where Jasmin's /rate was."""
        self.assertIsInstance(self.wrapper, CreditRate)
        self.assertIsInstance(self.wrapper.jasmin_rate, Rate)

    async def test_gsm_text_quotes_the_parts_send_charges(self):
        """Coding 0 is counted after GSM 03.38 encoding, as /send sends and charges it:
        extension characters take two septets, é and € are GSM, not UTF-8 bytes."""
        for content, parts in (("[" * 80 + "a", 2), ("a" * 159 + "[", 2), ("€" * 80, 1),
                               ("é" * 160, 1), ("[" * 80, 1), ("a" * 160, 1),
                               ("a" * 307, 3)):
            self.assertEqual(count_text(content).parts, parts)  # as price -q counts it
            await self.assert_quote(parts, content=content, coding="0")
        await self.assert_quote(2, content="€" * 81)  # coding 0 by default

    async def test_other_codings_quote_the_parts_send_charges(self):
        """Other codings keep the content's octets; hex-content is decoded first."""
        ucs2 = ("é" * 71).encode("utf-16-be").hex()
        await self.assert_quote(2, "ucs2", **{"hex-content": ucs2, "coding": "8"})
        await self.assert_quote(1, "ucs2", **{"hex-content": ucs2[:280], "coding": "8"})
        await self.assert_quote(2, "8bit", content="é" * 71, coding="4")  # 142 UTF-8 octets
        await self.assert_quote(1, "8bit", content="a" * 140, coding="4")
        await self.assert_quote(2, content="a" * 161, coding="1")

    async def test_unpriced_destination_keeps_jasmins_answer(self):
        """A destination no card prices keeps Jasmin's figures and says why."""
        self.wrapper.runtime.pricer = Pricer(cards(), "gold")
        code, answer = await self.rate(content="hello")
        self.assertEqual(code, 200)
        self.assertIn("error", answer["credits"])
        self.assertEqual(answer["submit_sm_count"], 1)
