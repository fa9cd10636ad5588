"""Wrapping Jasmin's HTTP API resources: let Jasmin answer, then amend what it wrote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class CollectingRequest:
    """The real request, except that what Jasmin writes is kept for ``on_finish``.

    ``on_finish(collecting)`` writes the (amended) ``body`` to ``collecting.request`` and
    finishes it.
    """

    def __init__(self, request: Any, on_finish: Callable[[CollectingRequest], None]):
        self.request = request
        self._on_finish = on_finish
        self.body = b""

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self._on_finish(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.request, name)
