"""``GET /credit`` on a real listening twisted.web site, against a real Redis."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

from jasmin.protocols.http.endpoints.balance import Balance
from jasmin.protocols.http.stats import HttpAPIStatsCollector
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from jasmin_credits.http_credit import CreditResource, install_http
from jasmin_credits.store import CreditStore, StoreSettings

from .redis_support import make_store
from .test_jcli_credit import DownRedis, FakeRouter, StubRuntime


class CreditEndpointTests(TestCase):
    async def serve(self) -> None:
        """Jasmin's /balance and our /credit on 127.0.0.1:<free port>."""
        self.store = await make_store(self)
        self.runtime = StubRuntime(self.store)
        self.router = FakeRouter()
        root = Resource()
        root.putChild(b"balance", Balance(self.router, HttpAPIStatsCollector().get(),
                                          logging.getLogger("jasmin-http-api-test")))
        self.site = Site(root)
        self.resource = install_http(self.site, self.runtime)
        port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    async def get(self, path: str, **args: str) -> tuple[int, object]:
        url = f"{self.base}{path}?{urlencode(args)}" if args else f"{self.base}{path}"
        response = await Agent(reactor).request(b"GET", url.encode())
        body = await readBody(response)
        return response.code, json.loads(body)

    async def test_install_uses_balance_router(self):
        """install_http puts /credit next to /balance and authenticates with its RouterPB."""
        await self.serve()
        self.assertIsInstance(self.site.resource.children[b"credit"], CreditResource)
        self.assertIs(self.resource.router_pb, self.router)

    async def test_own_wallet(self):
        """Good credentials answer the caller's wallet: amounts as text and as units."""
        await self.serve()
        await self.store.top_up("alice", 125_000, op_id="t", actor="test")
        await self.store.configure("alice", {"lim:credits:day": 1_000_000, "lim:msgs:month": 9,
                                             "overdraft": 5_000})
        await self.store.reserve("alice", 12_000, 1)
        code, body = await self.get("/credit", username="alice", password="alicepwd")
        self.assertEqual(code, 200)
        wallet = body["wallet"]
        self.assertEqual(wallet["uid"], "alice")
        self.assertEqual((wallet["balance"], wallet["balance_units"]), ("12.50", 125_000))
        self.assertEqual((wallet["reserved"], wallet["reserved_units"]), ("1.20", 12_000))
        self.assertEqual((wallet["available"], wallet["available_units"]), ("11.80", 118_000))
        self.assertEqual(wallet["overdraft"], "0.50")
        self.assertEqual(wallet["low_balance"], None)
        daily = wallet["periods"]["daily"]
        self.assertEqual(daily["credits_used"], "1.20")
        self.assertEqual((daily["credit_limit"], daily["credit_limit_units"]),
                         ("100.00", 1_000_000))
        self.assertEqual(daily["resets_at"], "2026-11-19T00:00:00+00:00")
        monthly = wallet["periods"]["monthly"]
        self.assertEqual((monthly["messages_used"], monthly["message_limit"]), (1, 9))
        self.assertEqual(wallet["periods"]["weekly"]["credit_limit"], None)

    async def test_no_wallet(self):
        """A user without a wallet gets {"wallet": null}."""
        await self.serve()
        code, body = await self.get("/credit", username="bob", password="bobpwd")
        self.assertEqual((code, body), (200, {"wallet": None}))

    async def test_wrong_credentials_403_like_balance(self):
        """Wrong password: 403 with the same body /balance answers."""
        await self.serve()
        code, body = await self.get("/credit", username="alice", password="wrong")
        balance_code, balance_body = await self.get("/balance", username="alice",
                                                    password="wrong")
        self.assertEqual(code, 403)
        self.assertEqual((code, body), (balance_code, balance_body))
        self.assertEqual(body, "Authentication failure for username:alice")

    async def test_disabled_user_and_missing_args(self):
        """A disabled user is refused (403); missing arguments answer 400 like /balance."""
        await self.serve()
        self.router.users["alice"].disable()
        code, _ = await self.get("/credit", username="alice", password="alicepwd")
        self.assertEqual(code, 403)
        code, body = await self.get("/credit", username="alice")
        self.assertEqual((code, body), await self.get("/balance", username="alice"))
        self.assertEqual(code, 400)

    async def test_store_unavailable_503(self):
        """Redis down: 503 with a JSON message, and the site keeps serving."""
        await self.serve()
        self.runtime.store = CreditStore(DownRedis(), clock=reactor, reactor=reactor,
                                         settings=StoreSettings(call_timeout=0.5))
        code, body = await self.get("/credit", username="alice", password="alicepwd")
        self.assertEqual(code, 503)
        self.assertIn("Credit store unavailable", body)
        self.runtime.store = self.store
        code, _ = await self.get("/credit", username="alice", password="alicepwd")
        self.assertEqual(code, 200)

    async def test_install_without_router_refused(self):
        """install_http on a site without /balance and no router_pb raises ValueError."""
        with self.assertRaises(ValueError):
            install_http(Site(Resource()), object())
