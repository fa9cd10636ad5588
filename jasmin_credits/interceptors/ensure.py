"""Make every MT message pass through an interceptor, so every message is charged.

Jasmin calls the interceptor only when an MT interceptor matches the message (there is no
chain, and no match means no call). Operators forget to add a ``DefaultInterceptor``; our
launcher closes that gap: when the operator's table has no interceptor for a message, a
pass-through ``DefaultInterceptor`` answers instead. The operator's own interceptors keep
precedence, and ``mtinterceptor -l`` still lists only theirs (``load`` replaces Jasmin's
table, so the fallback wraps the router's lookup rather than adding a row to the table).
"""

from __future__ import annotations

from typing import Any

from jasmin.routing.Interceptors import DefaultInterceptor
from jasmin.routing.jasminApi import MTInterceptorScript

PASS_THROUGH = '"""jasmin-credits fallback: every MT message passes (and is charged)."""\n'


class EnsuredInterceptionTable:
    """The router's current MT interception table, with a pass-through fallback."""

    def __init__(self, router: Any):
        self._router = router
        self.fallback = DefaultInterceptor(MTInterceptorScript(PASS_THROUGH))

    def getInterceptorFor(self, routable: Any) -> Any:  # noqa: N802 - Jasmin's API
        found = self._router.mt_interception_table.getInterceptorFor(routable)
        return found if found is not None else self.fallback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._router.mt_interception_table, name)


def ensure_mt_interceptor(router: Any) -> EnsuredInterceptionTable:
    """Make ``router`` (Jasmin's RouterPB) answer lookups through the fallback table."""
    table = EnsuredInterceptionTable(router)
    router.getMTInterceptionTable = lambda: table
    return table
