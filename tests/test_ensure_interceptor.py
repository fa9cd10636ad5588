"""The launcher's fallback interceptor: every MT message gets one, the operator's first."""

from __future__ import annotations

from jasmin.routing.InterceptionTables import MTInterceptionTable
from jasmin.routing.Interceptors import DefaultInterceptor
from jasmin.routing.jasminApi import MTInterceptorScript

from jasmin_credits.interceptors.ensure import ensure_mt_interceptor

from .jasmin_objects import routable, smpp_message


class Router:
    """The two attributes of Jasmin's RouterPB the fallback uses."""

    def __init__(self):
        self.mt_interception_table = MTInterceptionTable()

    def getMTInterceptionTable(self):  # noqa: N802
        return self.mt_interception_table


def test_empty_table_answers_the_pass_through_fallback():
    """With no interceptor of the operator's, lookups get the pass-through one."""
    router = Router()
    table = ensure_mt_interceptor(router)
    found = router.getMTInterceptionTable().getInterceptorFor(routable(smpp_message()))
    assert found is table.fallback
    assert "jasmin-credits fallback" in found.getScript().pyCode


def test_operator_interceptor_keeps_precedence_even_after_load_replaces_the_table():
    """The operator's DefaultInterceptor wins, also when `load` swaps Jasmin's table."""
    router = Router()
    ensure_mt_interceptor(router)
    mine = DefaultInterceptor(MTInterceptorScript("smpp_status = 0x0A"))
    router.mt_interception_table = MTInterceptionTable()  # what RouterPB.perspective_load does
    router.mt_interception_table.add(mine, 0)
    assert router.getMTInterceptionTable().getInterceptorFor(routable(smpp_message())) is mine
    assert len(router.getMTInterceptionTable().getAll()) == 1
