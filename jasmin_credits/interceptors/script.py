"""Run an operator's MT interceptor script with the semantics of Jasmin's interceptord.

Mirrors ``jasmin.interceptor.interceptor.InterceptorPB.perspective_run_script`` of Jasmin
0.11.1: globals ``routable``, ``smpp_status``, ``http_status`` (both None) and ``extra``
(a dict); an exception makes the call return False (Jasmin answers ESME_RSYSERR / HTTP
400); statuses set by the script become a status dict, and when only one of them is set
the other becomes 255 (SMPP) or 520 (HTTP).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jasmin.tools.eval import CompiledNode

log = logging.getLogger("jasmin-credits")

_compiled = CompiledNode()


@dataclass
class ScriptResult:
    """What the script decided: go on (``statuses`` None) or answer ``statuses``."""

    routable: Any
    statuses: dict[str, Any] | None = None
    failed: bool = False

    def jasmin_answer(self) -> bool | dict[str, Any] | None:
        """False or the status dict, as Jasmin expects; None when the message goes on."""
        if self.failed:
            return False
        return self.statuses


def run_script(script: str, routable: Any) -> ScriptResult:
    """Run ``script`` on ``routable`` (modified in place, as the script wishes)."""
    glo: dict[str, Any] = {"routable": routable, "smpp_status": None, "http_status": None,
                           "extra": {}}
    try:
        eval(_compiled.get(script), {}, glo)
    except Exception as error:
        params = getattr(getattr(routable, "pdu", None), "params", {}) or {}
        log.error("interceptor script failed on message from %s to %s: %s: %s",
                  params.get("source_addr"), params.get("destination_addr"),
                  type(error).__name__, error)
        return ScriptResult(routable, failed=True)
    smpp_status, http_status = glo["smpp_status"], glo["http_status"]
    if smpp_status is None and http_status is None:
        return ScriptResult(glo["routable"])
    if smpp_status is None or not isinstance(smpp_status, int):
        smpp_status = 255
    elif http_status is None or not isinstance(http_status, int):
        http_status = 520
    return ScriptResult(glo["routable"], {"http_status": http_status,
                                          "smpp_status": smpp_status,
                                          "extra": glo["extra"]})
