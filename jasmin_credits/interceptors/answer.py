"""Turn a charging decision into the answer Jasmin expects from ``run_script``."""

from __future__ import annotations

import pickle
from typing import Any

from ..charging import Decision
from ..config import CreditsConfig


def refusal_answer(decision: Decision, config: CreditsConfig) -> dict[str, Any]:
    """The status dict that makes Jasmin refuse with the configured statuses."""
    status = config.status(decision.refusal)
    return {
        "smpp_status": status.smpp,
        "http_status": status.http,
        "extra": {"jasmin_credits": decision.refusal.label, "detail": decision.detail},
    }


def accept_answer(routable: Any) -> bytes:
    """The pickled routable that makes Jasmin go on (with our tag on its PDU)."""
    return pickle.dumps(routable, pickle.HIGHEST_PROTOCOL)


def answer(decision: Decision, routable: Any, config: CreditsConfig) -> bytes | dict[str, Any]:
    """Jasmin's expected return for ``decision``."""
    if decision.accepted:
        return accept_answer(routable)
    return refusal_answer(decision, config)
