"""An interceptor client that runs inside jasmind: no PB hop, no interceptord.

Jasmin hands ``components['interceptor-pb-client']`` to the SMPP server, the HTTP API and
the SMPP client manager; it checks ``isConnected`` and calls ``run_script(script,
routable)``, expecting a Deferred that fires with the pickled routable (go on), a status
dict (refuse) or False (script failed). This class answers that, charging MT messages
after the operator's script let them through.
"""

from __future__ import annotations

from typing import Any

from jasmin.routing.Routables import RoutableSubmitSm
from twisted.internet.defer import Deferred, succeed

from ..charging import Charger
from ..config import CreditsConfig
from .answer import answer, live_answer
from .script import run_script


class InProcessInterceptor:
    """Jasmin's interceptor client, in process.

    ``charge=False`` gives the same script semantics without charging: the launcher hands
    that variant to HTTP ``/rate`` (Jasmin runs the MT interceptor there too) and to MO
    interception, and in ``pre-routing`` mode (:mod:`.prehook` charges after interception).
    "Go on" answers are :func:`~.answer.live_answer` handles, not the pickled routable.
    """

    isConnected = True

    def __init__(self, charger: Charger, config: CreditsConfig, *, charge: bool = True):
        self.charger = charger
        self.config = config
        self.charge = charge

    def without_charging(self) -> InProcessInterceptor:
        return InProcessInterceptor(self.charger, self.config, charge=False)

    def run_script(self, script: Any, routable: Any) -> Deferred:
        """Run ``script`` (Jasmin's ``InterceptorScript``, or its code) on ``routable``."""
        # Jasmin's stock client pickles the routable and interceptord runs the script on
        # the copy; here the script runs on Jasmin's own object, which Jasmin replaces by
        # our answer anyway.
        result = run_script(getattr(script, "pyCode", script), routable)
        if result.failed or result.statuses is not None:
            return succeed(result.jasmin_answer())
        if not self.charge or not isinstance(result.routable, RoutableSubmitSm):
            return succeed(live_answer(result.routable))
        return Deferred.fromCoroutine(self._charge(result.routable))

    async def _charge(self, routable: Any) -> bytes | dict[str, Any]:
        decision = await self.charger.charge(routable)
        return answer(decision, routable, self.config, accept=live_answer)
