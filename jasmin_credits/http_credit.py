"""``GET /credit`` on Jasmin's HTTP API: the caller's own wallet as JSON.

Authentication and authorization are exactly those of Jasmin's ``/balance``: the
``username`` and ``password`` arguments are checked by the RouterPB
(``authenticateUser``; a disabled user or group fails), wrong credentials answer 403
``"Authentication failure for username:..."``, and the user needs the ``http_balance``
authorization (else 403 too). Errors are JSON strings, as Jasmin's endpoints answer them.

The wallet is read from Redis without blocking the reactor (``NOT_DONE_YET``)::

    {"wallet": {"uid": "alice", "decimals": 4,
                "balance": "12.50", "balance_units": 125000,
                "reserved": ..., "available": ..., "overdraft": ...,
                "low_balance": null,
                "periods": {"daily": {"credits_used": "1.20", "credits_used_units": 12000,
                                      "credit_limit": null, "credit_limit_units": null,
                                      "messages_used": 1, "message_limit": null,
                                      "resets_at": "2026-11-19T00:00:00+00:00"},
                            "weekly": {...}, "monthly": {...}}}}

``{"wallet": null}`` when the user has no wallet; 503 when the credit store does not
answer.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

from jasmin.protocols.http.endpoints import authenticate_user
from jasmin.protocols.http.errors import HttpApiError
from jasmin.protocols.http.validation import HttpAPICredentialValidator, UrlArgsValidator
from twisted.internet.defer import CancelledError, Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from jasmin_credits.errors import StoreUnavailable
from jasmin_credits.money import format_amount
from jasmin_credits.store import Wallet

log = logging.getLogger("jasmin-credits.http")

_PERIOD_NAMES = {"day": "daily", "week": "weekly", "month": "monthly"}
_FIELDS = {b"username": {"optional": False, "pattern": re.compile(rb"^.{1,16}$")},
           b"password": {"optional": False, "pattern": re.compile(rb"^.{1,16}$")}}


class _NoStats:
    def inc(self, *args: Any) -> None:
        pass

    def set(self, *args: Any) -> None:
        pass


class CreditResource(Resource):
    """The ``/credit`` endpoint. ``router_pb`` authenticates; ``runtime`` has the store."""

    isLeaf = True

    def __init__(self, runtime: Any, router_pb: Any, stats: Any = None,
                 http_log: Any = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.router_pb = router_pb
        self.stats = stats or _NoStats()
        self.log = http_log or log

    def render_GET(self, request: Any) -> Any:  # noqa: N802 - twisted.web API
        request.responseHeaders.addRawHeader(b"content-type", b"application/json")
        self.stats.inc("request_count")
        self.stats.set("last_request_at", datetime.now())
        try:
            UrlArgsValidator(request, _FIELDS).validate()
            user = authenticate_user(request.args[b"username"][0],
                                     request.args[b"password"][0],
                                     self.router_pb, self.stats, self.log)
            status = user.getCnxStatus().httpapi
            status["connects_count"] += 1
            status["last_activity_at"] = datetime.now()
            HttpAPICredentialValidator("Balance", user, request).validate()
        except HttpApiError as error:
            self.log.error("/credit error: %s", error)
            return self._body(request, error.code, error.message)
        except Exception as error:
            self.log.exception("/credit failed")
            return self._body(request, 500, f"Unknown error: {error}")

        deferred = Deferred.fromCoroutine(self._wallet(user.uid))
        gone = []
        request.notifyFinish().addErrback(lambda _: (gone.append(True), deferred.cancel()))

        def send(result: tuple[int, Any]) -> None:
            if not gone:
                code, body = result
                request.write(self._body(request, code, body))
                request.finish()

        def failed(failure: Any) -> None:
            if failure.check(CancelledError) or gone:
                return
            if failure.check(StoreUnavailable):
                self.log.error("/credit: %s", failure.value)
                send((503, f"Credit store unavailable: {failure.value}"))
            else:
                self.log.error("/credit failed: %s", failure.getTraceback())
                send((500, f"Unknown error: {failure.value}"))

        deferred.addCallbacks(send, failed)
        return NOT_DONE_YET

    async def _wallet(self, uid: str) -> tuple[int, Any]:
        wallet = await self.runtime.store.wallet(uid)
        return 200, {"wallet": None if wallet is None else wallet_json(wallet, self.runtime)}

    @staticmethod
    def _body(request: Any, code: int, body: Any) -> bytes:
        request.setResponseCode(code)
        if isinstance(body, bytes):
            body = body.decode()
        return json.dumps(body).encode()


def wallet_json(wallet: Wallet, runtime: Any) -> dict[str, Any]:
    """A wallet as JSON-ready data: amounts as text with the configured precision and as
    integer minor units (``*_units``)."""
    decimals, display = runtime.decimals, runtime.display_decimals

    def amount(name: str, units: int | None) -> dict[str, Any]:
        text = None if units is None else format_amount(units, decimals, display)
        return {name: text, f"{name}_units": units}

    data: dict[str, Any] = {"uid": wallet.uid, "decimals": decimals}
    for name, units in (("balance", wallet.balance), ("reserved", wallet.reserved),
                        ("leased", wallet.leased),
                        ("available", wallet.available), ("overdraft", wallet.overdraft),
                        ("low_balance", wallet.low_balance)):
        data.update(amount(name, units))
    periods = {}
    for usage in wallet.usage:
        period: dict[str, Any] = {}
        period.update(amount("credits_used", usage.credits))
        period.update(amount("credit_limit", usage.credit_limit))
        period["messages_used"] = usage.msgs
        period["message_limit"] = usage.msg_limit
        period["resets_at"] = usage.period.end.astimezone(runtime.timezone).isoformat()
        periods[_PERIOD_NAMES[usage.period.kind]] = period
    data["periods"] = periods
    return data


def install_http(http_api_factory: Any, runtime: Any, router_pb: Any = None) -> CreditResource:
    """Add ``/credit`` to Jasmin's HTTP API.

    ``http_api_factory`` is the twisted.web Site serving Jasmin's ``HTTPApi`` (or that
    resource itself). The RouterPB comes from Jasmin's ``/balance`` resource unless
    ``router_pb`` is given; the stats and logger are ``/balance``'s too.
    """
    api = getattr(http_api_factory, "resource", http_api_factory)
    balance = getattr(api, "children", {}).get(b"balance")
    router_pb = router_pb or getattr(balance, "RouterPB", None)
    if router_pb is None:
        raise ValueError("no RouterPB: pass router_pb, or a Jasmin HTTPApi with /balance")
    resource = CreditResource(runtime, router_pb, stats=getattr(balance, "stats", None),
                              http_log=getattr(balance, "log", None))
    api.putChild(b"credit", resource)
    return resource
