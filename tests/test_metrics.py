"""Prometheus metrics: the text format (parsed back), the hooks in charging, settlement and
the store, and /metrics serving Jasmin's figures followed by ours."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from jasmin_credits.charging import Charger
from jasmin_credits.errors import Refusal
from jasmin_credits.metrics import CreditMetrics, MetricsResource, Registry, install_metrics
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
