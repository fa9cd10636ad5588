"""Event delivery from the outbox: consumer groups (once per group, claiming a dead
consumer's pending events), the signed webhook with retries against a local HTTP server,
and publishing to the real RabbitMQ."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from jasmin_credits.events_out import (
    AmqpSink,
    EventPublisher,
    OutboxConsumer,
    OutboxEvent,
    SinkUnavailable,
    WebhookSettings,
    WebhookSink,
    sign,
)
from jasmin_credits.metrics import CreditMetrics

from .rabbitmq_support import listen, rabbitmq, rabbitmq_server  # noqa: F401 - pytest fixtures
from .redis_support import make_store

SECRET = "s3cret"


class Recorder:
    """A sink that records what it is given; ``down`` makes it refuse everything."""

    name = "recorder"

    def __init__(self, down: bool = False) -> None:
        self.events: list[OutboxEvent] = []
        self.down = down

    def start(self) -> None:
        pass

    def stop(self) -> Deferred:
        return Deferred.fromCoroutine(_nothing())

    async def deliver(self, event: OutboxEvent) -> bool:
        if self.down:
            raise SinkUnavailable("down")
        self.events.append(event)
        return True


async def _nothing() -> None:
    return None


class Hook(Resource):
    """A webhook endpoint answering the codes in ``codes`` in turn (then 200); ``hang``
    never answers."""

    isLeaf = True

    def __init__(self, codes: list[int] | None = None, hang: bool = False) -> None:
        super().__init__()
        self.codes = list(codes or [])
        self.hang = hang
        self.requests: list[tuple[bytes, dict[bytes, bytes]]] = []

    def render_POST(self, request):  # noqa: N802 - twisted.web API
        body = request.content.read()
        headers = {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((body, headers))
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        return b"ok"


class EventFormatTests(SynchronousTestCase):
    def test_json_body_routing_key_and_signature(self):
        """The body is sorted JSON with ints for amounts; the signature is HMAC-SHA256."""
        event = OutboxEvent("1-0", "alice", "low_balance",
                            {"ts": "1795000000000", "balance": "-5", "threshold": "100"})
        self.assertEqual(event.routing_key, "credits.low_balance.alice")
        doc = json.loads(event.body())
        self.assertEqual(doc, {"id": "1-0", "uid": "alice", "type": "low_balance",
                               "ts": 1795000000000, "balance": -5, "threshold": 100})
        expected = hmac.new(SECRET.encode(), event.body(), hashlib.sha256).hexdigest()
        self.assertEqual(sign(SECRET, event.body()), "sha256=" + expected)


class OutboxTests(TestCase):
    async def store_with_group(self, *groups: str):
        store = await make_store(self)
        for group in groups:
            await OutboxConsumer(store, Recorder(), group=group, clock=reactor).ensure_group()
        return store

    async def pending(self, store, group: str) -> int:
        return int((await store._command("XPENDING", store.keys.outbox, group))[0])

    async def test_events_reach_the_sink_in_order_and_are_acked(self):
        """Top-ups, a low-balance alert and a plan event reach the sink, acked, in order."""
        store = await self.store_with_group("g")
        await store.configure("alice", {"low_balance": 100})
        await store.top_up("alice", 50, op_id="a", actor="t")
        metrics = CreditMetrics()
        sink = Recorder()
        consumer = OutboxConsumer(store, sink, group="g", consumer="c1", clock=reactor,
                                  metrics=metrics)
        await consumer.tick()
        self.assertEqual([e.type for e in sink.events],
                         ["settings", "low_balance", "topup"])
        self.assertEqual({e.uid for e in sink.events}, {"alice"})
        self.assertEqual(await self.pending(store, "g"), 0)
        self.assertEqual(metrics.published.value("recorder"), 3)

    async def test_two_consumers_of_one_group_deliver_each_event_once(self):
        """Two gateways' consumers in one group, ticking together: each event exactly once."""
        store = await self.store_with_group("g")
        for n in range(120):
            await store.top_up(f"u{n % 7}", 1, op_id=f"op{n}", actor="t")
        sinks = [Recorder(), Recorder()]
        consumers = [OutboxConsumer(store, s, group="g", consumer=f"c{i}", clock=reactor,
                                    batch=10) for i, s in enumerate(sinks)]
        await DeferredList([c.tick() for c in consumers for _ in range(3)])
        ids = [e.id for s in sinks for e in s.events]
        self.assertEqual(len(ids), 120)
        self.assertEqual(len(set(ids)), 120)
        self.assertEqual(await self.pending(store, "g"), 0)

    async def test_pending_events_of_a_dead_consumer_are_claimed(self):
        """Events read by a consumer that died before acking are claimed by another."""
        store = await self.store_with_group("g")
        for n in range(5):
            await store.top_up("alice", 1, op_id=f"op{n}", actor="t")
        # The dead one read the events (they are pending on it) but never delivered them.
        await store._command("XREADGROUP", "GROUP", "g", "dead", "COUNT", 100, "STREAMS",
                             store.keys.outbox, ">")
        self.assertEqual(await self.pending(store, "g"), 5)
        sink = Recorder()
        alive = OutboxConsumer(store, sink, group="g", consumer="alive", clock=reactor,
                               claim_idle=0)
        await alive.tick()
        self.assertEqual(len(sink.events), 5)
        self.assertEqual(await self.pending(store, "g"), 0)

    async def test_unavailable_sink_keeps_events_pending_then_delivers(self):
        """A sink that is down leaves events pending; when it is back they go, once."""
        store = await self.store_with_group("g")
        await store.top_up("alice", 1, op_id="a", actor="t")
        sink = Recorder(down=True)
        consumer = OutboxConsumer(store, sink, group="g", consumer="c", clock=reactor)
        await consumer.tick()
        self.assertEqual(await self.pending(store, "g"), 1)
        sink.down = False
        await consumer.tick()
        await consumer.tick()
        self.assertEqual(len(sink.events), 1)
        self.assertEqual(await self.pending(store, "g"), 0)

    async def test_groups_are_independent(self):
        """Each sink's group sees every event: a dead webhook does not hold back AMQP."""
        store = await self.store_with_group("amqp", "webhook")
        await store.top_up("alice", 1, op_id="a", actor="t")
        ok, down = Recorder(), Recorder(down=True)
        await OutboxConsumer(store, down, group="webhook", consumer="c", clock=reactor).tick()
        await OutboxConsumer(store, ok, group="amqp", consumer="c", clock=reactor).tick()
        self.assertEqual(len(ok.events), 1)
        self.assertEqual(await self.pending(store, "webhook"), 1)


class WebhookTests(TestCase):
    def serve(self, hook: Hook) -> str:
        port = reactor.listenTCP(0, Site(hook), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/hook"

    async def consumer(self, url: str, **settings) -> tuple[OutboxConsumer, object]:
        store = await make_store(self)
        values = dict(url=url, secret=SECRET, timeout=2.0, retries=3, backoff=0.01)
        values.update(settings)
        sink = WebhookSink(WebhookSettings(**values), reactor=reactor)
        consumer = OutboxConsumer(store, sink, clock=reactor)
        await consumer.ensure_group()
        return consumer, store

    async def test_retries_with_backoff_then_delivers_signed_json(self):
        """Two 500 answers then 200: three attempts, each signed; the event is acked."""
        hook = Hook(codes=[500, 503])
        consumer, store = await self.consumer(self.serve(hook))
        await store.top_up("alice", 42, op_id="a", actor="t")
        await consumer.tick()
        self.assertEqual(len(hook.requests), 3)
        for body, headers in hook.requests:
            self.assertEqual(headers[b"x-credits-signature"], sign(SECRET, body).encode())
            self.assertEqual(headers[b"content-type"], b"application/json")
        doc = json.loads(hook.requests[-1][0])
        self.assertEqual((doc["uid"], doc["type"], doc["amount"]), ("alice", "topup", 42))
        self.assertEqual(hook.requests[-1][1][b"x-credits-event"], doc["id"].encode())
        self.assertEqual((consumer.delivered, consumer.given_up), (1, 0))

    async def test_gives_up_after_retries_and_moves_on(self):
        """An endpoint that always fails: 1 + retries attempts, then the next event goes."""
        hook = Hook(codes=[500, 500, 200])
        consumer, store = await self.consumer(self.serve(hook), retries=1)
        await store.top_up("alice", 1, op_id="a", actor="t")
        await store.top_up("alice", 2, op_id="b", actor="t")
        await consumer.tick()
        self.assertEqual(len(hook.requests), 3)
        self.assertEqual((consumer.delivered, consumer.given_up), (1, 1))

    async def test_attempt_timeout(self):
        """An endpoint that never answers times out per attempt; the event is given up."""
        hook = Hook(hang=True)
        consumer, store = await self.consumer(self.serve(hook), retries=1, timeout=0.2)
        await store.top_up("alice", 1, op_id="a", actor="t")
        await consumer.tick()
        self.assertEqual(len(hook.requests), 2)
        self.assertEqual(consumer.given_up, 1)


@pytest.mark.usefixtures("rabbitmq")
class AmqpPublishTests(TestCase):
    timeout = 120

    async def test_events_published_to_the_credits_exchange(self):
        """A low-balance alert reaches a queue bound to credits.low_balance.* as JSON."""
        store = await make_store(self)
        exchange = f"credits_t{id(self):x}"
        queue_name = f"q{id(self):x}"

        async def declare(channel):
            await channel.exchange_declare(exchange=exchange, type="topic", durable=True)
            await channel.queue_declare(queue=queue_name, exclusive=True, auto_delete=True)
            await channel.queue_bind(queue=queue_name, exchange=exchange,
                                     routing_key="credits.low_balance.*")

        incoming = await listen(self, self.amqp_settings, queue_name, declare)
        sink = AmqpSink(self.amqp_settings, exchange=exchange)
        publisher = EventPublisher(store, [sink], clock=reactor, interval=0.05)
        await publisher.consumers[0].ensure_group()
        publisher.start()
        self.addCleanup(publisher.stop)
        await sink.publisher.connection.when_ready()
        await store.configure("alice", {"low_balance": 100})
        message = await incoming.get().addTimeout(30, reactor)
        self.assertEqual(message.routing_key, "credits.low_balance.alice")
        doc = json.loads(message.content.body)
        self.assertEqual((doc["type"], doc["uid"], doc["threshold"]), ("low_balance", "alice",
                                                                        100))
        self.assertEqual(message.content.properties["content-type"], "application/json")
        self.assertEqual(message.content.properties["delivery-mode"], 2)


class EventsConfigTests(SynchronousTestCase):
    def test_defaults_and_values(self):
        """events: and plans: sections default sensibly and read every key."""
        from jasmin_credits.config import parse_config

        config = parse_config({}, "c.yaml")
        self.assertEqual((config.events.enabled, config.events.amqp, config.events.exchange,
                          config.events.webhook), (True, True, "credits", None))
        self.assertEqual((config.plans.enabled, config.plans.interval, config.plans.catch_up),
                         (True, 30.0, None))
        config = parse_config({
            "events": {"amqp": {"exchange": "billing"}, "interval": 0.5, "claim_idle": 30,
                       "webhook": {"url": "https://hooks.example/credits", "secret": "k",
                                   "timeout": 3, "retries": 2, "backoff": 0.5}},
            "plans": {"interval": 60, "catch_up": 7200}}, "c.yaml")
        hook = config.events.webhook
        self.assertEqual((hook.url, hook.secret, hook.timeout, hook.retries, hook.backoff),
                         ("https://hooks.example/credits", "k", 3.0, 2, 0.5))
        self.assertEqual(config.events.exchange, "billing")
        self.assertEqual(config.plans.catch_up, 7200.0)

    def test_bad_values_name_the_key(self):
        """A bad URL, retry count, exchange or unknown key raises ConfigError naming it."""
        from jasmin_credits.config import parse_config
        from jasmin_credits.errors import ConfigError

        for data, key in (
            ({"events": {"webhook": {"url": "ftp://x"}}}, "events.webhook.url"),
            ({"events": {"webhook": {"url": "http://x", "retries": -1}}},
             "events.webhook.retries"),
            ({"events": {"amqp": {"exchange": "messaging"}}}, "events.amqp.exchange"),
            ({"events": {"webhok": {}}}, "events.webhok"),
            ({"plans": {"interval": 0}}, "plans.interval"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config(data, "c.yaml")
            self.assertEqual(caught.exception.key, key)
