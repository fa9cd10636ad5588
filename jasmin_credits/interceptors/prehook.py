"""``charging.mode: pre-routing``: charge between Jasmin's interception and routing steps.

The fastest way in, for our jasmind launcher. Jasmin calls an MT interceptor only when one
matches, and ``in-process`` mode needs one (a pass-through ``DefaultInterceptor``) for
every message, with a Deferred, a script run and a pickled answer around it. Here:

- SMPP: :func:`install_smpp` wraps the SMPP server factory's
  ``submit_sm_post_interception``, which Jasmin calls right after its credential checks and
  the operator's interceptor (if any matched), just before routing. The message is charged
  there and handed on as the live object; a refusal goes back through Jasmin's own
  interceptor-error path (the configured SMPP status). If Jasmin then fails the message
  (no route, throughput, queue), the hold of a single message is released at once; a part
  of a concatenated message keeps the shared hold for the sweeper
  (``settlement.unqueued_timeout``).
- HTTP ``/send``: Jasmin's send path has no seam between interception and routing, so
  :func:`install_http` makes it see an interceptor for every message: the operator's if one
  matches, else a marker, and answers through :class:`PreRoutingHttpClient` (operator's
  script, then charging, then a :func:`~.answer.live_answer`: no pickled routable). A
  hold on a message Jasmin then fails is released by the sweeper.
- ``/rate`` and MO messages are never charged (the launcher hands Jasmin a non-charging
  in-process client for the operator's own interceptors).

Without any MT interceptor configured, no interceptor client is called at all.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from jasmin.routing.Routables import RoutableSubmitSm
from smpp.pdu.pdu_types import CommandStatus
from twisted.internet.defer import Deferred, succeed

from ..charging import Charger, concat_key, count_parts
from ..config import CreditsConfig
from ..settlement import read_tag
from .answer import live_answer, refusal_answer
from .script import run_script

log = logging.getLogger("jasmin-credits")


class PreRoutingSmpp:
    """The charging wrapper of one SMPP server factory's ``submit_sm_post_interception``."""

    def __init__(self, factory: Any, charger: Charger, config: CreditsConfig):
        self.factory = factory
        self.charger = charger
        self.config = config
        self.post_interception = factory.submit_sm_post_interception

    def __call__(self, *args: Any, **kw: Any) -> Any:
        """Jasmin's call: ``(answer,)`` after an interceptor, ``routable=...`` without one."""
        if len(args) == 1:
            if not isinstance(args[0], bytes):
                # False, a status dict, a Failure: Jasmin's own handling, nothing charged.
                return self.post_interception(*args, **kw)
            routable = pickle.loads(args[0])  # our own live_answer or Jasmin-made bytes
        else:
            routable = kw.pop("routable")
        if not isinstance(routable, RoutableSubmitSm):
            return self.post_interception(routable=routable, **kw)
        return Deferred.fromCoroutine(self._charge_then_route(routable, kw))

    async def _charge_then_route(self, routable: Any, kw: dict[str, Any]) -> Any:
        decision = await self.charger.charge(routable)
        if not decision.accepted:
            return self.post_interception(refusal_answer(decision, self.config), **kw)
        response = self.post_interception(routable=routable, **kw)
        status = getattr(response, "status", None)
        if decision.ref is not None and status is not CommandStatus.ESME_ROK:
            if not self.charger.give_back(decision):
                await self._release(routable, decision.ref, status)
        return response

    async def _release(self, routable: Any, ref: str, status: Any) -> None:
        """Give back the hold of a message Jasmin did not queue (single messages only)."""
        pdu = routable.pdu
        if concat_key(pdu, count_parts(pdu)) is not None:
            return  # other parts share this hold: the sweeper settles it
        tag = read_tag(pdu) or {}
        try:
            await self.charger.store.release(str(tag.get("uid", routable.user.uid)), ref)
        except Exception as error:  # the sweeper releases it after unqueued_timeout
            log.warning("could not release hold %s after Jasmin answered %s: %s",
                        ref, status, error)


def install_smpp(factory: Any, charger: Charger, config: CreditsConfig) -> PreRoutingSmpp:
    """Charge every submit_sm Jasmin's SMPP server ``factory`` is about to route."""
    hook = PreRoutingSmpp(factory, charger, config)
    factory.submit_sm_post_interception = hook
    return hook


CHARGE_ONLY = "# jasmin-credits pre-routing: charge only\n"
"""The script of the marker interceptor: nothing to run, only charging."""


class _ChargeOnlyInterceptor:
    """Stands for "no operator interceptor matched" on the HTTP send path."""

    def getScript(self) -> str:  # noqa: N802 - Jasmin's API
        return CHARGE_ONLY

    def __repr__(self) -> str:
        return "PreRoutingCharge"


class _InterceptionTable:
    """The MT interception table as ``/send`` sees it: never without an interceptor."""

    def __init__(self, table: Any):
        self.table = table
        self.marker = _ChargeOnlyInterceptor()

    def getInterceptorFor(self, routable: Any) -> Any:  # noqa: N802 - Jasmin's API
        return self.table.getInterceptorFor(routable) or self.marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


class _RouterView:
    """Jasmin's RouterPB for ``/send``, with :class:`_InterceptionTable` in front."""

    def __init__(self, router: Any):
        self._router = router

    def getMTInterceptionTable(self) -> Any:  # noqa: N802 - Jasmin's API
        return _InterceptionTable(self._router.getMTInterceptionTable())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._router, name)


class PreRoutingHttpClient:
    """The interceptor client of ``/send``: operator's script (if any), then charging."""

    isConnected = True

    def __init__(self, charger: Charger, config: CreditsConfig):
        self.charger = charger
        self.config = config

    def run_script(self, script: Any, routable: Any) -> Deferred:
        """Jasmin's ``run_script``: a live handle (go on), a status dict or False."""
        code = getattr(script, "pyCode", script)
        if code != CHARGE_ONLY:
            result = run_script(code, routable)
            if result.failed or result.statuses is not None:
                return succeed(result.jasmin_answer())
            routable = result.routable
        if not isinstance(routable, RoutableSubmitSm):
            return succeed(live_answer(routable))
        return Deferred.fromCoroutine(self._charge(routable))

    async def _charge(self, routable: Any) -> bytes | dict[str, Any]:
        decision = await self.charger.charge(routable)
        if decision.accepted:
            return live_answer(routable)
        return refusal_answer(decision, self.config)


def install_http(send_resource: Any, charger: Charger, config: CreditsConfig) -> None:
    """Charge every message Jasmin's ``/send`` resource is about to route."""
    send_resource.RouterPB = _RouterView(send_resource.RouterPB)
    send_resource.interceptorpb_client = PreRoutingHttpClient(charger, config)
