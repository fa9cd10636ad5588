"""Turn a charging decision into the answer Jasmin expects from ``run_script``.

Jasmin takes a "go on" answer as pickled bytes and unpickles them at once. Across the PB
link (our interceptord) that must be the whole routable. Inside jasmind (the in-process
client) :func:`live_answer` sends a few bytes that unpickle to the very routable object
instead: pickling and unpickling the ~2 KB routable cost jasmind ~10% of its CPU per
message (docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any

from ..charging import Decision
from ..config import CreditsConfig
from ..http_send import report_refusal


def refusal_answer(decision: Decision, config: CreditsConfig) -> dict[str, Any]:
    """The status dict that makes Jasmin refuse with the configured statuses.

    An HTTP ``/send`` being served learns the reason too (:mod:`jasmin_credits.http_send`).
    """
    report_refusal(decision)
    status = config.status(decision.refusal)
    return {
        "smpp_status": status.smpp,
        "http_status": status.http,
        "extra": {"jasmin_credits": decision.refusal.label, "detail": decision.detail},
    }


def accept_answer(routable: Any) -> bytes:
    """The pickled routable that makes Jasmin go on (with our tag on its PDU)."""
    return pickle.dumps(routable, pickle.HIGHEST_PROTOCOL)


_live: dict[int, Any] = {}
_tokens = itertools.count()
LIVE_LIMIT = 100_000
"""Routables waiting for Jasmin to unpickle their handle (it does so at once; the bound
only guards against a path that would drop an answer)."""


def _take_live(token: int) -> Any:
    """Unpickling a :func:`live_answer`: the routable itself (once)."""
    return _live.pop(token)


class _LiveHandle:
    __slots__ = ("token",)

    def __init__(self, token: int):
        self.token = token

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _take_live, (self.token,)


def live_answer(routable: Any) -> bytes:
    """Bytes that unpickle, in this process and once, to ``routable`` itself.

    Only for answers consumed inside the same process (the in-process interceptor client):
    Jasmin runs ``pickle.loads`` on them right away and routes the object it gets.
    """
    token = next(_tokens)
    _live[token] = routable
    if len(_live) > LIVE_LIMIT:
        _live.pop(next(iter(_live)))
    return pickle.dumps(_LiveHandle(token), pickle.HIGHEST_PROTOCOL)


def answer(decision: Decision, routable: Any, config: CreditsConfig, *,
           accept: Any = accept_answer) -> bytes | dict[str, Any]:
    """Jasmin's expected return for ``decision`` (``accept`` builds the "go on" bytes)."""
    if decision.accepted:
        return accept(routable)
    return refusal_answer(decision, config)
