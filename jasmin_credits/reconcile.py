"""Fail-open bookkeeping: messages let through while the credit store was unavailable.

With ``charging.on_store_error: pass`` a message passes uncharged when Redis does not
answer. Each such message is appended to a local journal (one JSON line, flushed at
once). :class:`Reconciler` replays the journal when Redis answers again: each record
becomes an ``adjust`` entry (a negative top-up) in the user's credit log, idempotent on
the record's id, so a replay interrupted by a crash or repeated by a restart charges
each message exactly once. The journal is per gateway process; the charge is exact but
not checked against limits (the message has already left).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from .errors import StoreUnavailable
from .pricing import Quote
from .store import CreditStore

log = logging.getLogger("jasmin-credits")


class Journal:
    """Append-only JSON-lines file of uncharged messages."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.replaying = self.path.with_name(self.path.name + ".replaying")

    def record(self, uid: str, quote: Quote, why: str, now_ms: int) -> str:
        """Append one uncharged message; returns its id."""
        record_id = f"unrecorded-{uuid.uuid4().hex}"
        line = json.dumps({"id": record_id, "uid": uid, "ts": now_ms, "amount": quote.total,
                           "destination": quote.destination, "country": quote.country,
                           "parts": quote.parts, "why": why})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A few hundred bytes, no fsync: appending does not stall the reactor.
        with open(self.path, "a", encoding="utf-8") as journal:
            journal.write(line + "\n")
        return record_id

    def take(self) -> list[dict[str, Any]]:
        """Move the journal aside (new records go to a fresh file) and read it.

        A file left aside by an interrupted replay is read first, again: replaying is
        idempotent.
        """
        if not self.replaying.exists():
            if not self.path.exists():
                return []
            os.replace(self.path, self.replaying)
        records = []
        for number, line in enumerate(self.replaying.read_text("utf-8").splitlines(), 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                log.error("%s line %d is not JSON; skipped", self.replaying, number)
        return records

    def done(self) -> None:
        """Forget the records taken (all replayed)."""
        self.replaying.unlink(missing_ok=True)


class Reconciler:
    """Charges journaled messages once the store answers; checks every ``interval`` s."""

    def __init__(self, store: CreditStore, journal: Journal, *, clock: IReactorTime,
                 interval: float = 30.0):
        self.store = store
        self.journal = journal
        self.loop = LoopingCall(lambda: Deferred.fromCoroutine(self._safe_replay()))
        self.loop.clock = clock
        self.interval = interval

    def record(self, uid: str, quote: Quote, why: str) -> None:
        """The Charger's ``on_unrecorded`` hook."""
        self.journal.record(uid, quote, why, self.store.now_ms())

    def start(self) -> None:
        self.loop.start(self.interval, now=True)

    def stop(self) -> Deferred:
        if self.loop.running:
            self.loop.stop()
        return Deferred.fromCoroutine(self._noop())

    @staticmethod
    async def _noop() -> None:
        return None

    async def _safe_replay(self) -> None:
        try:
            await self.replay()
        except StoreUnavailable as error:
            log.info("unrecorded messages wait for the credit store: %s", error)
        except Exception:
            log.exception("replaying unrecorded messages failed; will retry")

    async def replay(self) -> int:
        """Charge every journaled message once; returns how many records were applied."""
        records = self.journal.take()
        for record in records:
            reason = (f"sent while the credit store was unavailable: {record['destination']}"
                      f" ({record['parts']} parts)")
            await self.store.top_up(record["uid"], -int(record["amount"]), op_id=record["id"],
                                    actor="reconciler", reason=reason, kind="adjust")
        self.journal.done()
        if records:
            log.warning("charged %d messages sent while the credit store was unavailable",
                        len(records))
        return len(records)
