"""Prometheus metrics: the text format (parsed back), the hooks in charging, settlement and
the store, and /metrics serving Jasmin's figures followed by ours."""

from __future__ import annotations

import fcntl
import json
import os

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from jasmin_credits.charging import Charger
from jasmin_credits.child_metrics import ChildMetrics, SnapshotWriter
from jasmin_credits.errors import Refusal
from jasmin_credits.leasing import LeaseBook
from jasmin_credits.metrics import (
    CreditMetrics,
    MetricsResource,
    Registry,
    Snapshot,
    install_metrics,
)
from jasmin_credits.settlement import Settlement

from .jasmin_objects import routable, smpp_message, test_pricer
from .redis_support import make_store
from .test_settlement import resp, submit_sm, wire


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


class RegistryTests(SynchronousTestCase):
    def test_text_format_parses_back(self):
        """Counters with escaped labels, gauges and a cumulative histogram parse back."""
        r = Registry()
        c = r.counter("jasmin_credits_x_total", "X things.", ("reason",))
        c.inc('we"ird\\')
        c.inc("plain", amount=2.5)
        r.gauge("jasmin_credits_g", "G.").set(7)
        h = r.histogram("jasmin_credits_h_seconds", "H.", buckets=(0.1, 1.0))
        for v in (0.05, 0.5, 5.0):
            h.observe(v)
        text = r.render()
        parsed = families(text)
        self.assertEqual(parsed["jasmin_credits_x"].type, "counter")
        self.assertEqual(sample(text, "jasmin_credits_x_total", reason='we"ird\\'), 1)
        self.assertEqual(sample(text, "jasmin_credits_x_total", reason="plain"), 2.5)
        self.assertEqual(sample(text, "jasmin_credits_g"), 7)
        self.assertEqual(sample(text, "jasmin_credits_h_seconds_bucket", le="0.1"), 1)
        self.assertEqual(sample(text, "jasmin_credits_h_seconds_bucket", le="1.0"), 2)
        self.assertEqual(sample(text, "jasmin_credits_h_seconds_bucket", le="+Inf"), 3)
        self.assertEqual(sample(text, "jasmin_credits_h_seconds_count"), 3)
        self.assertAlmostEqual(sample(text, "jasmin_credits_h_seconds_sum"), 5.55)

    def test_every_documented_metric_is_exposed(self):
        """CreditMetrics exposes the names the README documents, with their types."""
        parsed = families(CreditMetrics().render())
        expected = {
            "jasmin_credits_charges": "counter", "jasmin_credits_credits_charged": "counter",
            "jasmin_credits_refusals": "counter", "jasmin_credits_refunds": "counter",
            "jasmin_credits_open_reservations": "gauge",
            "jasmin_credits_store_call_seconds": "histogram",
            "jasmin_credits_plan_runs": "counter",
            "jasmin_credits_events_published": "counter",
            "jasmin_credits_events_failed": "counter",
            "jasmin_credits_link_retries": "counter",
            "jasmin_credits_links_given_up": "counter",
            "jasmin_credits_outcome_retries": "counter",
            "jasmin_credits_outcomes_given_up": "counter",
            "jasmin_credits_settlement_events": "counter",
            "jasmin_credits_lease_requests": "counter",
            "jasmin_credits_lease_messages": "counter",
            "jasmin_credits_leases_open": "gauge",
            "jasmin_credits_lease_credits_unused": "gauge",
            "jasmin_credits_lease_markers_waiting": "gauge",
        }
        self.assertEqual({n: f.type for n, f in parsed.items()}, expected)

    def test_wraps_jasmin_metrics(self):
        """/metrics answers Jasmin's lines, then ours, as Prometheus text."""
        class JasminMetrics(Resource):
            isLeaf = True

            def render_GET(self, request):  # noqa: N802
                request.setResponseCode(200)
                return b"# TYPE httpapi_request_count counter\nhttpapi_request_count 4\n\n"

        api = Resource()
        api.putChild(b"metrics", JasminMetrics())
        metrics = CreditMetrics(decimals=2)
        metrics.charged("GB", 1250)
        install_metrics(api, metrics)
        request = DummyRequest([b""])
        api.children[b"metrics"].render_GET(request)
        self.assertEqual(request.finished, 1)
        text = b"".join(request.written).decode()
        self.assertTrue(text.startswith("# TYPE httpapi_request_count counter\n"))
        # (the parser names a counter's sample with _total)
        self.assertEqual(sample(text, "httpapi_request_count_total"), 4)
        self.assertEqual(sample(text, "jasmin_credits_credits_charged_total", country="GB"),
                         12.5)
        self.assertIn(b"version=0.0.4",
                      request.responseHeaders.getRawHeaders(b"content-type")[0])


def counted(**refunds: int) -> CreditMetrics:
    """Metrics of a process that refunded ``refunds`` (by cause) and timed two store calls."""
    metrics = CreditMetrics()
    for cause, n in refunds.items():
        for _ in range(n):
            metrics.refunded(cause)
    metrics.observe_store_call(0.0001)
    metrics.observe_store_call(3.0)
    return metrics


class SnapshotTests(SynchronousTestCase):
    """Another process's figures (jasmin-credits-settled's) added to ours at render."""

    def test_sources_add_up_with_our_own_figures(self):
        ours, child = counted(dlr=1), counted(dlr=2, submit_error=4)
        ours.registry.sources.append(child.registry.snapshot)
        child.open.set(99)  # gauges are each process's own: not added
        text = ours.render()
        p = "jasmin_credits_"
        for name, labels, value in (
                ("refunds_total", {"cause": "dlr"}, 3),
                ("refunds_total", {"cause": "submit_error"}, 4),
                ("store_call_seconds_bucket", {"le": "0.0005"}, 2),
                ("store_call_seconds_bucket", {"le": "+Inf"}, 4),
                ("store_call_seconds_sum", {}, 6.0002),
                ("open_reservations", {}, 0)):
            self.assertAlmostEqual(sample(text, p + name, **labels), value, msg=name)
        self.assertEqual(ours.refunds.value("dlr"), 1)  # rendering changes nothing

    def test_json_round_trip_and_sum(self):
        a, b = counted(dlr=2).registry.snapshot(), counted(submit_error=1).registry.snapshot()
        self.assertEqual(Snapshot.from_json(json.loads(json.dumps(a.to_json()))), a)
        both = a.plus(b)
        self.assertEqual(both.counters["jasmin_credits_refunds_total"],
                         {("dlr",): 2, ("submit_error",): 1})
        self.assertEqual(both.histograms["jasmin_credits_store_call_seconds"][2], 4)
        self.assertEqual(a, counted(dlr=2).registry.snapshot())  # plus changes neither

    def test_malformed_snapshots_are_refused_by_name(self):
        for data, named in (
                ([], "an object"),
                ({"counters": []}, "counters must be an object"),
                ({"counters": {"x_total": [["a", "many"]]}}, "counter x_total"),
                ({"counters": {"x_total": [[1, 2]]}}, "counter x_total"),
                ({"counters": {"x_total": 5}}, "counter x_total"),
                ({"histograms": {"h": [[1, "2"], 0.5, 3]}}, "histogram h"),
                ({"histograms": {"h": [[1], 0.5]}}, "histogram h"),
                ({"counters": {"x_total": [[True]]}}, "counter x_total")):
            with self.assertRaises(ValueError) as raised:
                Snapshot.from_json(data)
            self.assertIn(named, str(raised.exception))

    def test_a_label_count_that_does_not_match_is_left_out(self):
        ours = CreditMetrics()
        ours.registry.sources.append(
            lambda: Snapshot({"jasmin_credits_refunds_total": {("a", "b"): 5.0,
                                                               ("dlr",): 1.0}}))
        refunds = families(ours.render())["jasmin_credits_refunds"].samples
        self.assertEqual([(s.labels, s.value) for s in refunds], [({"cause": "dlr"}, 1)])


class ChildPipeTests(SynchronousTestCase):
    """SnapshotWriter (in the child) to ChildMetrics (in the gateway) through a real pipe."""

    def setUp(self):
        self.read_end, write_end = os.pipe()
        os.set_blocking(self.read_end, False)
        self.addCleanup(os.close, self.read_end)
        self.write_end = write_end
        self.clock = Clock()
        self.figures = CreditMetrics()
        self.writer = SnapshotWriter(self.figures.registry, write_end, self.clock)
        self.gateway = ChildMetrics()

    def tearDown(self):
        if self.writer.fd is not None:
            os.close(self.write_end)

    def drain(self) -> bytes:
        try:
            data = os.read(self.read_end, 1 << 20)
        except BlockingIOError:
            return b""
        self.gateway.data_received(data)
        return data

    def refunds(self) -> float:
        return self.gateway.snapshot().counters["jasmin_credits_refunds_total"].get(
            ("submit_error",), 0)

    def test_changes_are_written_once_a_tick_and_nothing_when_unchanged(self):
        self.writer.start()
        self.assertEqual(self.drain().count(b"\n"), 1)
        self.figures.refunded("submit_error")
        self.figures.refunded("submit_error")
        self.assertEqual(self.drain(), b"")  # not before the tick
        self.clock.advance(1)
        self.assertEqual(self.drain().count(b"\n"), 1)
        self.assertEqual(self.refunds(), 2)
        self.clock.advance(1)
        self.assertEqual(self.drain(), b"")  # unchanged: nothing written
        self.figures.refunded("submit_error")
        self.writer.stop()  # the last figures go at once
        self.drain()
        self.assertEqual(self.refunds(), 3)

    def test_a_full_pipe_never_blocks_and_the_line_is_finished_later(self):
        fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe
        for n in range(3000):  # a snapshot of ~60 KB
            self.figures.refused(f"reason-{n:05d}")

        def pump() -> int:
            """Ticks until the writer has handed its line over; how many."""
            self.writer.send()
            ticks = 1
            while self.writer._unsent and ticks < 100:
                self.drain()
                self.writer.send()
                ticks += 1
            self.drain()
            return ticks

        self.writer.send()
        self.assertTrue(self.writer._unsent)  # the pipe took part of it; no blocking
        self.figures.refused("reason-late")  # meanwhile: waits for the first line
        self.assertGreater(pump(), 10)
        refusals = self.gateway.snapshot().counters["jasmin_credits_refusals_total"]
        self.assertEqual(len(refusals), 3000)  # the first line, whole
        pump()
        refusals = self.gateway.snapshot().counters["jasmin_credits_refusals_total"]
        self.assertEqual(len(refusals), 3001)  # then the newer one

    def test_gateway_gone_stops_the_writer(self):
        os.close(self.read_end)
        self.read_end = os.open(os.devnull, os.O_RDONLY)  # for the cleanup
        self.writer.send()
        self.assertIsNone(self.writer.fd)
        os.close(self.write_end)

    def test_unreadable_lines_are_ignored_with_one_warning(self):
        self.gateway.data_received(b"{}\n")
        with self.assertLogs("jasmin-credits.metrics", "WARNING") as logged:
            self.gateway.data_received(b"not json\n[1]\n")
        self.assertEqual(len(logged.output), 1)
        self.assertIn("unreadable metrics", logged.output[0])
        self.assertEqual(self.gateway.snapshot(), Snapshot())


class HookTests(TestCase):
    async def test_charger_counts_charges_and_refusals(self):
        """Accepted messages count per country in credits; refusals per reason."""
        store = await make_store(self)
        await store.top_up("alice", 3000, op_id="f", actor="t")
        metrics = CreditMetrics(decimals=4)
        metrics.watch_store(store)
        charger = Charger(store, lambda: test_pricer(), metrics=metrics)
        for _ in range(2):
            self.assertTrue((await charger.charge(routable(smpp_message()))).charged)
        refused = await charger.charge(routable(smpp_message()))
        self.assertEqual(refused.refusal, Refusal.INSUFFICIENT_CREDIT)
        await charger.charge(routable(smpp_message(destination="hello")))
        await metrics.refresh()
        text = metrics.render()
        self.assertEqual(sample(text, "jasmin_credits_charges_total", country="GB"), 2)
        self.assertEqual(sample(text, "jasmin_credits_credits_charged_total", country="GB"),
                         0.24)
        self.assertEqual(sample(text, "jasmin_credits_refusals_total",
                                reason="insufficient_credit"), 1)
        self.assertEqual(sample(text, "jasmin_credits_refusals_total",
                                reason="invalid_destination"), 1)
        self.assertEqual(sample(text, "jasmin_credits_open_reservations"), 2)
        self.assertEqual(sample(text, "jasmin_credits_store_call_seconds_count"), 3)

    async def test_watched_store_times_lazy_settlement_calls(self):
        """Settlement's lazy calls go through the timed path too (and still settle)."""
        store = await make_store(self)
        await store.top_up("alice", 3000, op_id="f", actor="t")
        metrics = CreditMetrics(decimals=4)
        metrics.watch_store(store)
        hold = await store.reserve("alice", 100, 1)
        await store.link("alice", hold.ref, "m1", 1, lazy=True)
        settled = await store.settle_message("m1", True, lazy=True)
        self.assertEqual((settled.changed, settled.balance), (-100, 2900))
        text = metrics.render()  # reserve, link, outcome (settled in the same call)
        self.assertEqual(sample(text, "jasmin_credits_store_call_seconds_count"), 3)

    async def test_settlement_counts_refunds_by_cause(self):
        """A final error response counts as a submit_error refund."""
        store = await make_store(self)
        await store.top_up("alice", 1000, op_id="f", actor="t")
        metrics = CreditMetrics()
        settlement = Settlement(store, metrics=metrics)
        held = await store.reserve("alice", 10, 1)
        message = submit_sm("alice", held.ref)
        await settlement.submit_sm(*wire(message))
        await settlement.submit_sm_resp(*wire(resp(message.properties["message-id"],
                                                   "ESME_RINVDSTADR")))
        self.assertEqual(metrics.refunds.value("submit_error"), 1)

    async def test_resource_serves_alone(self):
        """Without Jasmin's resource (interceptord's port) only our metrics are served."""
        request = DummyRequest([b""])
        MetricsResource(CreditMetrics()).render_GET(request)
        text = b"".join(request.written).decode()
        self.assertTrue(text.startswith("# HELP jasmin_credits_charges_total"))

    async def test_lease_figures(self):
        """Lease requests by outcome and messages held on leases, counted; what the open
        leases hold and the end markers waiting for the broker, read at each scrape."""
        clock = Clock()
        clock.advance(1_795_000_000)
        store = await make_store(self, clock=clock)
        await store.top_up("alice", 1000, op_id="f", actor="t")
        await store.top_up("bob", 5, op_id="f", actor="t")  # less than one message
        metrics = CreditMetrics(decimals=2)
        broker = {"up": False}

        def publish(uid, lease_id):
            if not broker["up"]:
                raise ConnectionError("AMQP connection not ready")

        book = LeaseBook(store, clock, publish, messages=4, metrics=metrics,
                         ready=lambda: broker["up"])
        metrics.watch_leases(book)
        periods = store.period_ids(store.now_ms())
        book.ask("alice", 10)
        book.ask("bob", 10)
        await book.requests()
        self.assertIsNotNone(book.hold("alice", 10, periods))
        self.assertIsNotNone(book.hold("alice", 10, periods))
        def figures(*names, **labels):
            text = metrics.render()
            return [sample(text, f"jasmin_credits_{name}", **labels) for name in names]

        requests = "lease_requests_total"
        self.assertEqual(figures(requests, outcome="granted") + figures(requests,
                                                                        outcome="refused"),
                         [1, 1])
        now = ("lease_messages_total", "leases_open", "lease_credits_unused",
               "lease_markers_waiting")
        self.assertEqual(figures(*now), [2, 1, 0.2, 0])  # (20 units unused)

        with self.assertLogs("jasmin-credits", "WARNING"):
            book.end_wallet("alice")
            clock.advance(book.end_delay)  # its marker fails: the broker is away
        self.assertEqual(figures(*now), [2, 0, 0, 1])
        broker["up"] = True
        book.tick()
        self.assertEqual(figures(*now), [2, 0, 0, 0])

        store.redis.disconnect()
        book.ask("carol", 10)
        await book.requests()
        self.assertEqual(figures(requests, outcome="unavailable"), [1])
