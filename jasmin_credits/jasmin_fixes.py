"""Corrections to released Jasmin versions, applied at start by our jasmind launcher.

Jasmin 0.11.1's ``SMPPClientSMListener.submit_sm_resp_event`` (``jasmin/managers/listeners.py``)
builds the ``dlr.submit_sm_resp`` event from ``_pdu.response``: ``_pdu`` is the *request*
(``r.request``, or the last part of a multipart chain) and has no ``response``, and on an error
response ``_pdu`` is not even bound. Every submit_sm_resp therefore fails after the AMQP ack:
no ``dlr.submit_sm_resp``, no ``submit.sm.resp.<cid>``, no billing remainder, and no delivery
receipt ever reaches an SMPP client (upstream issues #1236 and #1237; fixed on master by
commit a3635cc1, which uses the response PDU passed in, ``r.response``).

:func:`apply` recompiles the method from Jasmin's own source with exactly that substitution,
so everything else in the method stays as released. It only acts when the installed source
still has the bug, so it is a no-op on a fixed Jasmin.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

BUGGY = "_pdu.response"
FIXED = "r.response"

#: Jasmin versions known to ship the bug (the check on the source is what decides).
AFFECTED_VERSIONS = frozenset({"0.11.1"})


def _original(func: Callable[..., Any]) -> Callable[..., Any]:
    """Return the undecorated function behind ``@defer.inlineCallbacks``."""
    return inspect.unwrap(func)


def needs_submit_sm_resp_fix(method: Callable[..., Any]) -> bool:
    """Tell whether ``method`` (a ``submit_sm_resp_event``) reads the non-existent attribute."""
    if getattr(method, "__jasmin_credits_fixed__", False):
        return False
    try:
        source = inspect.getsource(_original(method))
    except (OSError, TypeError):
        return False
    return BUGGY in source


def corrected_submit_sm_resp_event(method: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a corrected copy of ``method`` in the namespace of its module.

    The copy is the original source with ``_pdu.response`` replaced by ``r.response``; its
    decorators (``@defer.inlineCallbacks``) are applied again by the compilation.
    """
    func = _original(method)
    lines, first = inspect.getsourcelines(func)
    # Keep the original indentation (a string continuation line in it starts at column 0,
    # so dedenting is not possible) under an ``if True:``, and the original line numbers.
    source = "\n" * max(first - 2, 0) + "if True:\n" + "".join(lines).replace(BUGGY, FIXED)
    namespace: dict[str, Any] = {}
    code = compile(source, inspect.getsourcefile(func) or "<jasmin-fix>", "exec")
    exec(code, func.__globals__, namespace)  # noqa: S102 - Jasmin's own, corrected source
    fixed = namespace[func.__name__]
    fixed.__jasmin_credits_fixed__ = True
    fixed.__jasmin_credits_original__ = method
    fixed.__qualname__ = getattr(method, "__qualname__", fixed.__qualname__)
    return fixed


def _listener_class(listener_class: type | None) -> type:
    """``listener_class``, or Jasmin's ``SMPPClientSMListener`` when None."""
    if listener_class is not None:
        return listener_class
    from jasmin.managers.listeners import SMPPClientSMListener

    return SMPPClientSMListener


def fix_submit_sm_resp_event(listener_class: type | None = None) -> bool:
    """Replace ``listener_class.submit_sm_resp_event`` by a corrected one if it has the bug.

    ``listener_class`` defaults to Jasmin's ``SMPPClientSMListener``. Returns ``True`` when the
    method was replaced, ``False`` when there was nothing to do (already fixed or corrected).
    """
    listener_class = _listener_class(listener_class)
    method = listener_class.__dict__["submit_sm_resp_event"]
    if not needs_submit_sm_resp_fix(method):
        return False
    listener_class.submit_sm_resp_event = corrected_submit_sm_resp_event(method)
    return True


def jasmin_version() -> str:
    """The installed Jasmin version, or ``"unknown"``."""
    try:
        from importlib.metadata import version

        return version("jasmin")
    except Exception:  # pragma: no cover - jasmin is a dependency
        return "unknown"


def stock_jasmind_warning(listener_class: type | None = None) -> str | None:
    """What the drop-in interceptord says at start when the installed Jasmin has the bug
    (``listener_class`` defaults to Jasmin's ``SMPPClientSMListener``), or None.

    A stock ``jasmind.py`` of such a version never publishes ``dlr.submit_sm_resp``, so no
    hold the interceptord makes is ever settled by the SMSC's answer: the sweeper settles
    each by ``settlement.unanswered_policy`` (by default a refund: never charged). The
    interceptord cannot tell which jasmind calls it, so it says it once, at start."""
    method = _listener_class(listener_class).__dict__["submit_sm_resp_event"]
    if not needs_submit_sm_resp_fix(method):
        return None
    return (f"the installed Jasmin ({jasmin_version()}) has the submit_sm_resp bug (upstream "
            "#1236): a stock jasmind.py never publishes dlr.submit_sm_resp, so holds made "
            "here would only be settled by settlement.unanswered_policy after "
            "unanswered_timeout. Run jasmind as jasmin-credits-jasmind (same flags; without "
            "--credits-config it is stock jasmind plus this one correction)")


def apply() -> list[str]:
    """Apply every correction the installed Jasmin needs; return the names of those applied."""
    applied = []
    if fix_submit_sm_resp_event():
        applied.append("submit_sm_resp_event")
        if jasmin_version() not in AFFECTED_VERSIONS:
            log.warning("applied the submit_sm_resp fix to unexpected jasmin %s", jasmin_version())
    return applied
