"""``/send`` refusals say why: the reason goes into the body Jasmin writes.

Jasmin answers an interceptor refusal with the HTTP status we configured and a fixed body,
``Error "Interception specific error code 402"``. Wrapped by :class:`CreditSend`, the body
names the reason instead: ``Error "Insufficient credit (jasmin-credits:
insufficient_credit)"``. The in-process interceptor (and the pre-routing hook) drop their
decision into a slot that travels with the request: Jasmin hands the request to its
``route_routable`` (through ``reactor.callFromThread``, which carries no context), and our
wrapper of that method puts the request's slot into a context variable that Jasmin's
inlineCallbacks then carry into the interceptor call. So a decision reaches exactly the
request it belongs to. Successes and Jasmin's own errors are untouched.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from twisted.web.resource import Resource

from .charging import Decision
from .http_wrap import CollectingRequest

REFUSAL_SLOT: ContextVar[list[Decision] | None] = ContextVar("jasmin_credits_refusal",
                                                              default=None)


def report_refusal(decision: Decision) -> None:
    """Tell the HTTP request being served (if any) why its message was refused."""
    slot = REFUSAL_SLOT.get()
    if slot is not None and decision.refusal is not None:
        slot.append(decision)


class CreditSend(Resource):
    """Wraps Jasmin's ``Send`` resource; see the module docstring."""

    isLeaf = True

    def __init__(self, jasmin_send: Any, config: Any):
        super().__init__()
        self.jasmin_send = jasmin_send
        self.config = config

    def render_GET(self, request: Any) -> Any:  # noqa: N802 - twisted.web API
        return self._render(self.jasmin_send.render_GET, request)

    def render_POST(self, request: Any) -> Any:  # noqa: N802 - twisted.web API
        return self._render(self.jasmin_send.render_POST, request)

    def _render(self, render: Any, request: Any) -> Any:
        slot: list[Decision] = []
        collecting = CollectingRequest(request, lambda c: self._finish(c, slot))
        collecting.refusal_slot = slot
        return render(collecting)

    def _finish(self, collected: CollectingRequest, slot: list[Decision]) -> None:
        request = collected.request
        body = collected.body
        if slot:
            refusal = slot[-1].refusal
            if request.code == self.config.status(refusal).http:
                body = f'Error "{refusal.text} (jasmin-credits: {refusal.label})"'.encode()
        request.write(body)
        request.finish()


def install_send(http_api: Any, config: Any) -> CreditSend | None:
    """Replace ``/send`` on Jasmin's HTTP API by our wrapper around it."""
    api = getattr(http_api, "resource", http_api)
    jasmin_send = getattr(api, "children", {}).get(b"send")
    if jasmin_send is None:
        return None
    route_routable = jasmin_send.route_routable

    def route_with_slot(updated_request: Any) -> Any:
        token = REFUSAL_SLOT.set(getattr(updated_request, "refusal_slot", None))
        try:
            return route_routable(updated_request=updated_request)
        finally:
            REFUSAL_SLOT.reset(token)

    jasmin_send.route_routable = route_with_slot
    wrapper = CreditSend(jasmin_send, config)
    api.putChild(b"send", wrapper)
    return wrapper
