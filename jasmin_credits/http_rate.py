"""``GET /rate`` answers with our price, not Jasmin's route rate.

Jasmin's own ``/rate`` resource still does everything it did (argument validation,
authentication, running the MT interceptor (without charging: see
``CreditsRuntime.install_http``), routing, counting PDUs); when it answers 200 we add our
quote, and ``unit_rate`` becomes our unit price::

    {"unit_rate": 0.05, "submit_sm_count": 3,
     "credits": {"card": "world", "country": "GB", "prefix": "447", "parts": 3,
                 "encoding": "gsm7", "unit_price": "0.0500", "total": "0.1500"}}

``unit_rate`` stays a JSON number for Jasmin's clients (a display value); the exact
amounts are the strings under ``credits``. A destination we do not price keeps Jasmin's
answer, with ``"credits": {"error": "..."}``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from twisted.web.resource import Resource

from .errors import InvalidDestination, NotPriced
from .http_wrap import CollectingRequest
from .money import format_amount
from .parts import Parts, encoding_of


class CreditRate(Resource):
    """Wraps Jasmin's ``Rate`` resource; see the module docstring."""

    isLeaf = True

    def __init__(self, jasmin_rate: Any, runtime: Any):
        super().__init__()
        self.jasmin_rate = jasmin_rate
        self.runtime = runtime

    def render_GET(self, request: Any) -> Any:  # noqa: N802 - twisted.web API
        return self.jasmin_rate.render_GET(CollectingRequest(request, self._finish))

    def _finish(self, collected: CollectingRequest) -> None:
        request = collected.request
        body = collected.body
        if request.code == 200:
            try:
                body = json.dumps(self._amend(request, json.loads(body))).encode()
            except Exception as error:  # never lose Jasmin's answer over our addition
                self.jasmin_rate.log.error("jasmin-credits /rate quote failed: %s", error)
        request.write(body)
        request.finish()

    def _amend(self, request: Any, answer: dict[str, Any]) -> dict[str, Any]:
        args = request.args
        user = self.jasmin_rate.RouterPB.authenticateUser(
            username=args[b"username"][0].decode(), password=args[b"password"][0].decode())
        uid = str(user.uid)
        gid = str(user.group.gid)
        coding = int(args.get(b"coding", [b"0"])[0])
        parts = Parts(encoding_of(coding), int(answer["submit_sm_count"]))
        decimals = self.runtime.decimals
        try:
            quote = self.runtime.pricer.quote(uid, gid, args[b"to"][0].decode(), parts)
        except (InvalidDestination, NotPriced) as error:
            answer["credits"] = {"error": str(error)}
            return answer
        answer["unit_rate"] = float(Decimal(quote.unit_price).scaleb(-decimals))
        answer["credits"] = {
            "card": quote.card, "country": quote.country, "prefix": quote.prefix,
            "parts": quote.parts, "encoding": quote.encoding,
            "unit_price": format_amount(quote.unit_price, decimals),
            "total": format_amount(quote.total, decimals),
        }
        return answer


def install_rate(http_api: Any, runtime: Any) -> CreditRate | None:
    """Replace ``/rate`` on Jasmin's HTTP API by our wrapper around it."""
    api = getattr(http_api, "resource", http_api)
    jasmin_rate = getattr(api, "children", {}).get(b"rate")
    if jasmin_rate is None:
        return None
    wrapper = CreditRate(jasmin_rate, runtime)
    api.putChild(b"rate", wrapper)
    return wrapper
