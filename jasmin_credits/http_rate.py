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

The parts are those ``/send`` would charge for the same arguments: we build the PDU chain
as Jasmin's ``/send`` builds it (GSM 03.38 for coding 0, the content as given for other
codings, ``hex-content`` decoded) with the same splitting settings, and count it as
charging does (:func:`jasmin_credits.charging.count_parts`). Jasmin 0.11.1's ``/rate``
cannot be trusted for this: it compares the coding with ``'0'`` (a str) where the
argument is bytes, so it never encodes to GSM 03.38 and counts UTF-8 bytes (``'€' * 80``
is 2 parts there, 1 when sent; ``'[' * 80 + 'a'`` 1 there, 2 when sent). Its
``submit_sm_count`` is therefore replaced by our count whenever we quote, so the answer
never shows two part counts.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import messaging.sms.gsm0338  # noqa: F401 - registers the 'gsm0338' codec /send encodes with
from jasmin.protocols.http.endpoints import hex2bin
from twisted.web.resource import Resource

from .charging import count_parts
from .errors import InvalidDestination, NotPriced
from .http_wrap import CollectingRequest
from .money import format_amount
from .parts import Parts


class CreditRate(Resource):
    """Wraps Jasmin's ``Rate`` resource; see the module docstring."""

    isLeaf = True

    def __init__(self, jasmin_rate: Any, runtime: Any):
        super().__init__()
        self.jasmin_rate = jasmin_rate
        self.runtime = runtime

    def render_GET(self, request: Any) -> Any:  # noqa: N802 - twisted.web API
        # The arguments as the client sent them: Jasmin may rewrite the content in place.
        args = {name: list(values) for name, values in request.args.items()}
        return self.jasmin_rate.render_GET(
            CollectingRequest(request, lambda collected: self._finish(collected, args)))

    def _finish(self, collected: CollectingRequest, args: dict[bytes, list[Any]]) -> None:
        request = collected.request
        body = collected.body
        if request.code == 200:
            try:
                body = json.dumps(self._amend(request, args, json.loads(body))).encode()
            except Exception as error:  # never lose Jasmin's answer over our addition
                self.jasmin_rate.log.error("jasmin-credits /rate quote failed: %s", error)
        request.write(body)
        request.finish()

    def _amend(self, request: Any, args: dict[bytes, list[Any]],
               answer: dict[str, Any]) -> dict[str, Any]:
        user = self.jasmin_rate.RouterPB.authenticateUser(
            username=args[b"username"][0].decode(), password=args[b"password"][0].decode())
        uid = str(user.uid)
        gid = str(user.group.gid)
        parts = self.parts_sent(args)
        answer["submit_sm_count"] = parts.parts
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

    def parts_sent(self, args: dict[bytes, list[Any]]) -> Parts:
        """The parts ``/send`` would charge for these request arguments.

        Mirrors how Jasmin's ``Send.route_routable`` builds the message (content encoded
        to GSM 03.38 for coding 0, replacing what it cannot encode; other codings as
        given; ``hex-content`` decoded), split by the same ``SMPPOperationFactory``
        settings. Raises on content ``/send`` would refuse too (bad UTF-8 or hex).
        """
        coding = args.get(b"coding", [b"0"])[0]
        if b"hex-content" in args:
            short_message = hex2bin(args[b"hex-content"][0])
        else:
            short_message = args.get(b"content", [b""])[0]
            if coding == b"0":
                short_message = short_message.decode().encode("gsm0338", "replace")
        pdu = self.jasmin_rate.opFactory.SubmitSM(
            source_addr=None, destination_addr=args[b"to"][0],
            short_message=short_message, data_coding=int(coding))
        return count_parts(pdu)


def install_rate(http_api: Any, runtime: Any) -> CreditRate | None:
    """Replace ``/rate`` on Jasmin's HTTP API by our wrapper around it."""
    api = getattr(http_api, "resource", http_api)
    jasmin_rate = getattr(api, "children", {}).get(b"rate")
    if jasmin_rate is None:
        return None
    wrapper = CreditRate(jasmin_rate, runtime)
    api.putChild(b"rate", wrapper)
    return wrapper
