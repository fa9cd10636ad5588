"""Our tag in the headers of every ``submit.sm.*`` message our launcher's jasmind queues.

Settlement links a hold to Jasmin's message id from the ``submit.sm.*`` event
(``settlement.link: events``, the default). The tag (uid, reservation ref, parts) travels on
the PDU, which Jasmin pickles into the message body, so settlement unpickled every body to
read it: about a sixth of jasmin-credits-settled's CPU (``bench_gateway.py --profile``).

:func:`install` wraps jasmind's ``SMPPClientManagerPB.perspective_submit_sm`` and the
``publish`` of its AMQP factory (instance attributes; Jasmin's classes are untouched). While
Jasmin queues a tagged PDU (its method builds and publishes the ``submit.sm.<cid>`` message
before it returns or waits on anything), that message gets the header
:data:`~jasmin_credits.settlement.TAG_HEADER` = ``"<uid> <ref> <parts>"``, and settlement
reads the header instead of the body (:func:`~jasmin_credits.settlement.header_tag`).
Messages without it (stock jasmind with our interceptord, anything queued otherwise) are
read from the body as before. Jasmin ignores headers it does not know; the body keeps the
tag. Whoever can publish on the broker can forge either, so the header is checked exactly
like the body's tag.
"""

from __future__ import annotations

import logging
from typing import Any

from .amqp import EXCHANGE
from .linking import submitted_pdu
from .settlement import PDU_ATTRIBUTE, TAG_HEADER, tag_header

log = logging.getLogger("jasmin-credits")

_SUBMIT_SM = "submit.sm."


class TagHeaders:
    """The two wrappers of one ``SMPPClientManagerPB`` (see the module's docstring)."""

    def __init__(self, client_manager: Any):
        self.submit_sm = client_manager.perspective_submit_sm
        self.publish = client_manager.amqpBroker.publish
        self._header: str | None = None
        self.tagged = 0
        """Messages published with the header."""

    def perspective_submit_sm(self, *args: Any, **kw: Any) -> Any:
        """Jasmin's method, unchanged; a tagged PDU's header is ready while it runs."""
        # (a pickled PDU, from a remote PB caller, is bytes: no tag)
        tag = getattr(submitted_pdu(args, kw), PDU_ATTRIBUTE, None)
        if tag is None:
            return self.submit_sm(*args, **kw)
        try:
            self._header = tag_header(tag)
        except Exception:  # noqa: BLE001 - a bad tag: settlement reads the body and says so
            self._header = None
        try:
            return self.submit_sm(*args, **kw)
        finally:
            self._header = None

    def amqp_publish(self, *args: Any, **kw: Any) -> Any:
        """Jasmin's ``publish``, unchanged, but the ``submit.sm.*`` message of a tagged PDU
        carries the header. Other publishes cost one attribute test."""
        header = self._header
        if header is not None and kw.get("exchange") == EXCHANGE and str(
                kw.get("routing_key", "")).startswith(_SUBMIT_SM):
            self._header = None  # one message per queued PDU
            try:
                kw["content"].properties.setdefault("headers", {})[TAG_HEADER] = header
                self.tagged += 1
            except Exception:  # noqa: BLE001 - never into Jasmin's path: the body has it
                log.warning("could not add the %s header: settlement reads the body",
                            TAG_HEADER)
        return self.publish(*args, **kw)


def install(client_manager: Any) -> TagHeaders:
    """Wrap ``client_manager`` (jasmind's ``SMPPClientManagerPB``, its AMQP broker added);
    installing twice wraps once."""
    current = getattr(client_manager.perspective_submit_sm, "__self__", None)
    if isinstance(current, TagHeaders):
        return current
    wrappers = TagHeaders(client_manager)
    client_manager.perspective_submit_sm = wrappers.perspective_submit_sm
    client_manager.amqpBroker.publish = wrappers.amqp_publish
    return wrappers


__all__ = ["TagHeaders", "install"]
