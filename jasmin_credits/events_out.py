"""Event delivery: the outbox stream to an AMQP topic exchange and an HTTP webhook.

Every event a Lua script emits (top-ups, plan runs, low balance, limit reached, refunds,
...) is appended to the user's events log and to the global outbox stream
``{prefix}:outbox`` in the same atomic step. :class:`EventPublisher` reads the outbox with
one Redis consumer group per sink (``amqp``, ``webhook``) and delivers each event:

- **AMQP**: to our durable topic exchange (default ``credits``), routing key
  ``credits.<type>.<uid>`` (e.g. ``credits.low_balance.alice``), persistent JSON body,
  property ``message-id`` = the outbox id. Bind a queue to ``credits.#`` or
  ``credits.low_balance.*`` to consume.
- **webhook** (optional): ``POST`` of the same JSON to a URL, header
  ``X-Credits-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`` and
  ``X-Credits-Event: <outbox id>``; a 2xx answer delivers it. Each attempt has a timeout;
  failures are retried ``retries`` times with exponential back-off, then the event is given
  up (logged, counted in ``events_failed_total``) so a dead endpoint cannot stall the rest.

Delivery guarantees. Within a consumer group each event goes to one consumer, so any
number of gateways may run a publisher: each event is delivered once per sink. An event is
acknowledged (XACK) only after its sink accepted it: a publisher that dies first leaves it
pending, and another publisher claims it (XAUTOCLAIM) after ``claim_idle`` seconds. So
delivery is at least once; the JSON ``id`` (the outbox id) identifies repeats. Charging
never waits for any of this: the publisher is a separate reader of the stream.
The groups start at the end of the stream when first created (history is not replayed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from txamqp.content import Content

from .amqp import AmqpPublisher, AmqpSettings, AmqpUnavailable
from .errors import StoreUnavailable
from .metrics import NO_METRICS
from .periodic import PeriodicJob
from .store import CreditStore

log = logging.getLogger("jasmin-credits")

EXCHANGE = "credits"
SIGNATURE_HEADER = b"X-Credits-Signature"
EVENT_HEADER = b"X-Credits-Event"
_INT_FIELDS = frozenset({"ts", "amount", "balance", "available", "threshold", "limit", "code",
                         "parts", "target", "cap", "used", "max_per_day"})


@dataclass(frozen=True)
class OutboxEvent:
    """One outbox entry: ``id`` (stream id), ``uid``, ``type`` and the other fields."""

    id: str
    uid: str
    type: str
    fields: dict[str, str]

    @property
    def routing_key(self) -> str:
        return f"credits.{self.type}.{self.uid}"

    def as_json(self) -> dict[str, Any]:
        """The JSON document: ``id``, ``uid``, ``type``, ``ts`` (ms) and every field
        (integers where the field is a number of credit units or a count)."""
        doc: dict[str, Any] = {"id": self.id, "uid": self.uid, "type": self.type}
        for key, value in self.fields.items():
            if key in _INT_FIELDS and value.lstrip("-").isdigit():
                doc[key] = int(value)
            else:
                doc[key] = value
        return doc

    def body(self) -> bytes:
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str | bytes, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _pairs(flat: Any) -> dict[str, str]:
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    flat = list(flat or [])
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


def parse_entries(entries: Any) -> list[OutboxEvent | str]:
    """Stream entries (txredisapi or redis-py shape) as events; a deleted entry (trimmed
    while pending) comes back as its bare id, to acknowledge."""
    out: list[OutboxEvent | str] = []
    for item in entries or []:
        entry_id, flat = str(item[0]), item[1]
        if flat is None:
            out.append(entry_id)
            continue
        fields = _pairs(flat)
        uid = fields.pop("uid", "")
        kind = fields.pop("type", "")
        out.append(OutboxEvent(entry_id, uid, kind, fields))
    return out


class Sink(Protocol):
    """Where a consumer delivers events. ``deliver`` raises to leave the event pending."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> Deferred: ...

    async def deliver(self, event: OutboxEvent) -> bool:
        """True: delivered; False: given up (acknowledged anyway)."""
        ...


class SinkUnavailable(Exception):
    """The sink cannot take events now; they stay pending and are tried again."""


# -- AMQP ---------------------------------------------------------------------------------

class AmqpSink:
    """Publishes to our durable topic exchange through a reconnecting connection."""

    name = "amqp"

    def __init__(self, settings: AmqpSettings, *, exchange: str = EXCHANGE,
                 reactor: Any = None, clock: IReactorTime | None = None):
        self.exchange = exchange
        self.publisher = AmqpPublisher(settings, self._on_ready, reactor=reactor, clock=clock)

    async def _on_ready(self, client: Any, channel: Any) -> None:
        await channel.exchange_declare(exchange=self.exchange, type="topic", durable=True)

    def start(self) -> None:
        self.publisher.start()

    def stop(self) -> Deferred:
        return self.publisher.stop()

    async def deliver(self, event: OutboxEvent) -> bool:
        content = Content(event.body())
        content["delivery-mode"] = 2
        content["content-type"] = "application/json"
        content["message-id"] = event.id
        try:
            await self.publisher.publish(self.exchange, event.routing_key, content)
        except AmqpUnavailable as error:
            raise SinkUnavailable(str(error)) from None
        return True


# -- webhook ------------------------------------------------------------------------------

@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str | None = None
    timeout: float = 5.0
    """Seconds for one attempt (connect, answer and body)."""
    retries: int = 5
    """Attempts after the first before giving up."""
    backoff: float = 1.0
    """Seconds before the first retry; doubles each retry, capped at ``max_backoff``."""
    max_backoff: float = 60.0


class WebhookSink:
    """POSTs each event as JSON, signed, with a timeout and retries with back-off."""

    name = "webhook"

    def __init__(self, settings: WebhookSettings, *, reactor: Any = None,
                 clock: IReactorTime | None = None, agent: Any = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.settings = settings
        self.clock = clock if clock is not None else reactor
        self.agent = agent or Agent(reactor, connectTimeout=settings.timeout)
        self.attempts = 0
        self._stopping = False

    def start(self) -> None:
        self._stopping = False

    def stop(self) -> Deferred:
        self._stopping = True
        return succeed(None)

    def headers(self, event: OutboxEvent, body: bytes) -> Headers:
        headers = Headers({b"Content-Type": [b"application/json"],
                           b"User-Agent": [b"jasmin-credits"],
                           EVENT_HEADER: [event.id.encode()]})
        if self.settings.secret:
            headers.addRawHeader(SIGNATURE_HEADER, sign(self.settings.secret, body).encode())
        return headers

    async def _attempt(self, event: OutboxEvent, body: bytes) -> int:
        self.attempts += 1
        d = self.agent.request(b"POST", self.settings.url.encode(), self.headers(event, body),
                               FileBodyProducer(BytesIO(body)))

        async def exchange() -> int:
            response = await d
            await readBody(response)
            return response.code

        call = Deferred.fromCoroutine(exchange())
        call.addTimeout(self.settings.timeout, self.clock)
        return await call

    async def deliver(self, event: OutboxEvent) -> bool:
        body = event.body()
        delay = self.settings.backoff
        for attempt in range(self.settings.retries + 1):
            if attempt:
                if self._stopping:
                    raise SinkUnavailable("stopping")
                await deferLater(self.clock, delay, lambda: None)
                delay = min(delay * 2, self.settings.max_backoff)
            try:
                code = await self._attempt(event, body)
            except Exception as error:  # noqa: BLE001 - network trouble: retry
                log.info("webhook %s for event %s failed: %s", self.settings.url, event.id,
                         error or type(error).__name__)
                continue
            if 200 <= code < 300:
                return True
            log.info("webhook %s answered %s for event %s", self.settings.url, code, event.id)
        log.error("webhook %s: event %s given up after %s attempts", self.settings.url,
                  event.id, self.settings.retries + 1)
        return False


# -- the outbox reader ------------------------------------------------------------------------

def default_consumer_name() -> str:
    """This process in consumer groups: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class OutboxConsumer(PeriodicJob):
    """Feeds one sink from the outbox through consumer group ``group``.

    Every ``interval`` seconds of ``clock``: claim entries other consumers left pending for
    more than ``claim_idle`` seconds, retry this consumer's pending entries, then read new
    ones, ``batch`` at a time, in order. The first entry the sink cannot take stops the
    round; it stays pending and is retried next round.
    """

    def __init__(self, store: CreditStore, sink: Any, *, group: str | None = None,
                 consumer: str | None = None, clock: IReactorTime, interval: float = 1.0,
                 batch: int = 100, claim_idle: float = 60.0, max_rounds: int = 10,
                 metrics: Any = NO_METRICS):
        self.store = store
        self.sink = sink
        self.group = group or sink.name
        self.consumer = consumer or default_consumer_name()
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.claim_idle_ms = int(claim_idle * 1000)
        self.max_rounds = max_rounds
        self.metrics = metrics
        self.delivered = 0
        self.given_up = 0
        self._group_ready = False

    @property
    def stream(self) -> str:
        return self.store.keys.outbox

    @property
    def job_name(self) -> str:
        return f"outbox consumer {self.group}"

    async def _tick(self) -> None:
        try:
            await self.ensure_group()
            if not await self._process(await self._claim()):
                return
            if not await self._process(await self._read("0")):
                return
            for _ in range(self.max_rounds):
                events = await self._read(">")
                if not await self._process(events) or len(events) < self.batch:
                    return
        except StoreUnavailable as error:
            log.warning("outbox %s: %s; retrying", self.group, error)

    async def ensure_group(self) -> None:
        """Create the consumer group (at the end of the stream) if it does not exist."""
        if self._group_ready:
            return
        try:
            await self.store._command("XGROUP", "CREATE", self.stream, self.group, "$",
                                      "MKSTREAM")
        except Exception as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def _claim(self) -> list[OutboxEvent | str]:
        reply = await self.store._command("XAUTOCLAIM", self.stream, self.group, self.consumer,
                                          self.claim_idle_ms, "0-0", "COUNT", self.batch)
        return parse_entries(reply[1] if reply else [])

    async def _read(self, start: str) -> list[OutboxEvent | str]:
        reply = await self.store._command("XREADGROUP", "GROUP", self.group, self.consumer,
                                          "COUNT", self.batch, "STREAMS", self.stream, start)
        if not reply:
            return []
        if isinstance(reply, dict):  # redis-py with RESP3 maps
            reply = list(reply.items())
        return parse_entries(reply[0][1])

    async def _process(self, events: list[OutboxEvent | str]) -> bool:
        """Deliver in order; False when the sink stopped taking events."""
        for event in events:
            if isinstance(event, str):
                await self._ack(event)
                continue
            try:
                ok = await _maybe(self.sink.deliver(event))
            except SinkUnavailable as error:
                log.info("outbox %s: %s; event %s stays pending", self.group, error, event.id)
                return False
            if ok:
                self.delivered += 1
                self.metrics.event_published(self.sink.name)
            else:
                self.given_up += 1
                self.metrics.event_failed(self.sink.name)
            await self._ack(event.id)
        return True

    async def _ack(self, entry_id: str) -> None:
        await self.store._command("XACK", self.stream, self.group, entry_id)


async def _maybe(result: Awaitable[bool] | bool) -> bool:
    if isinstance(result, bool):
        return result
    return await result


class EventPublisher:
    """The service: one :class:`OutboxConsumer` per sink; ``start()`` and ``stop()``."""

    def __init__(self, store: CreditStore, sinks: list[Any], *, clock: IReactorTime,
                 consumer: str | None = None, interval: float = 1.0, batch: int = 100,
                 claim_idle: float = 60.0, metrics: Any = NO_METRICS):
        self.sinks = sinks
        self.consumers = [
            OutboxConsumer(store, sink, consumer=consumer, clock=clock, interval=interval,
                           batch=batch, claim_idle=claim_idle, metrics=metrics)
            for sink in sinks
        ]

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()
        for consumer in self.consumers:
            consumer.start()

    def stop(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await DeferredList([c.stop() for c in self.consumers], consumeErrors=True)
        await DeferredList([s.stop() for s in self.sinks], consumeErrors=True)


__all__ = [
    "EXCHANGE", "AmqpSink", "EventPublisher", "OutboxConsumer", "OutboxEvent",
    "SinkUnavailable", "WebhookSettings", "WebhookSink", "parse_entries", "sign",
]
