"""What Prometheus reads from us, checked by Prometheus's own ``promtool`` (Debian's
prometheus package, installed by scripts/setup.sh): our metrics pass its lint
(``promtool check metrics``; a real gateway's: tests/e2e/test_settled_e2e.py), and
deploy/prometheus/jasmin-credits-alerts.yaml is sound:

- the rules file is valid (``promtool check rules``), and a broken one is refused;
- every rule names only metrics, and label values, that jasmin-credits exposes (a renamed
  metric would otherwise leave an alert that never fires);
- ``promtool test rules`` evaluates the rules over series shaped like our metrics: each
  alert fires when it should, with its annotations rendered, and stays silent otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from jasmin_credits.errors import Refusal
from jasmin_credits.metrics import CreditMetrics, Histogram
from jasmin_credits.settlement import DELIVER_SM, SUBMIT_SM, SUBMIT_SM_RESP, Outcome

from .prometheus_support import lint_metrics

RULES = (Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
         / "jasmin-credits-alerts.yaml")

LABEL_VALUES = {
    "outcome": {o.value for o in Outcome} | {"requeued", "retried", "dropped", "granted",
                                             "refused", "unavailable"},
    "event": {SUBMIT_SM, SUBMIT_SM_RESP, DELIVER_SM},
    "reason": {r.label for r in Refusal},
}
"""The values our labelled counters take (settlement_events_total, lease_requests_total,
refusals_total)."""

RISING = "0+1x40"
"""A counter rising by 1 a minute for 40 minutes: its increase over 15 minutes is 15."""


def exposed_series() -> set[str]:
    names = set()
    for metric in CreditMetrics().registry.metrics.values():
        names.add(metric.name)
        if isinstance(metric, Histogram):
            names |= {metric.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    pairs = ",".join(f'{k}="{v}"' for k, v in {"instance": "gw1", **labels}.items())
    return {"series": f"jasmin_credits_{name}{{{pairs}}}", "values": values}


class AlertRulesTests(SynchronousTestCase):
    def setUp(self):
        self.promtool = shutil.which("promtool")
        if self.promtool is None:
            self.fail("promtool not found: scripts/setup.sh installs Debian's prometheus")
        groups = yaml.safe_load(RULES.read_text())["groups"]
        self.rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
        self.tmp = Path(tempfile.mkdtemp(prefix="jc-promtool-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def run_promtool(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.promtool, *args], capture_output=True, text=True,
                              timeout=60, cwd=self.tmp)

    def test_our_metrics_pass_promtool_lint(self):
        metrics = CreditMetrics(decimals=4)
        metrics.charged("GB", 1200)
        metrics.refused("insufficient_credit")
        metrics.observe_store_call(0.002)
        metrics.settlement_event("submit_sm", "settled")
        metrics.lease_request("granted")
        self.assertEqual(lint_metrics(metrics.render()), "")
        self.assertIn("counter metrics should have \"_total\" suffix",
                      lint_metrics("# HELP jasmin_credits_x X.\n# TYPE jasmin_credits_x counter\n"
                                   "jasmin_credits_x 1\n"))

    def test_promtool_accepts_the_rules_and_refuses_a_broken_one(self):
        done = self.run_promtool("check", "rules", str(RULES))
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn(f"SUCCESS: {len(self.rules)} rules found", done.stdout)
        broken = self.tmp / "broken.yaml"
        broken.write_text(RULES.read_text().replace("[15m]))", "[15m])", 1))
        self.assertNotEqual(self.run_promtool("check", "rules", str(broken)).returncode, 0)

    def test_rules_name_only_what_we_expose(self):
        exposed = exposed_series()
        for name, rule in self.rules.items():
            used = set(re.findall(r"\bjasmin_credits_\w+", rule["expr"]))
            self.assertTrue(used, name)
            self.assertLessEqual(used, exposed, name)
            for label, value in re.findall(r'(\w+)="([^"]*)"', rule["expr"]):
                self.assertIn(value, LABEL_VALUES[label], f"{name}: {label}")

    def fires(self, name: str, value: str | None = None, **labels: str) -> dict[str, Any]:
        """The alert ``name`` as promtool should see it: the rule's labels plus ``labels``,
        its annotations rendered with ``value`` and ``labels``."""
        rule = self.rules[name]

        def render(text: str) -> str:
            if value is not None:
                text = text.replace("{{ $value }}", value)
            for key, label in labels.items():
                text = text.replace(f"{{{{ $labels.{key} }}}}", label)
            self.assertNotIn("{{", text, f"{name}: a template the test does not render")
            return text

        return {"exp_labels": {**rule["labels"], **labels},
                "exp_annotations": {k: render(v) for k, v in rule["annotations"].items()}}

    def case(self, input_series: list[dict[str, str]], eval_time: str, name: str,
             *alerts: dict[str, Any]) -> dict[str, Any]:
        return {"interval": "1m", "input_series": input_series,
                "alert_rule_test": [{"eval_time": eval_time, "alertname": name,
                                     "exp_alerts": list(alerts)}]}

    def test_alerts_fire_when_they_should_and_only_then(self):
        linked = series("settlement_events_total", "0+10x40", event="submit_sm",
                        outcome="settled")
        answered = series("settlement_events_total", "0+10x40", event="submit_sm_resp",
                          outcome="settled")
        tests = [
            # queued and charged, no SMSC answer (a stock 0.11.1 jasmind, or no connector)
            self.case([linked], "20m", "JasminCreditsNoSmscAnswers",
                      self.fires("JasminCreditsNoSmscAnswers")),
            self.case([linked, answered], "20m", "JasminCreditsNoSmscAnswers"),
            self.case([series("settlement_events_total", "100x40", event="submit_sm",
                              outcome="settled")], "20m", "JasminCreditsNoSmscAnswers"),
            # markers waiting: pending for 5 minutes first
            self.case([series("lease_markers_waiting", "0 0 3x30")], "4m",
                      "JasminCreditsLeaseMarkersWaiting"),
            self.case([series("lease_markers_waiting", "0 0 3x30")], "10m",
                      "JasminCreditsLeaseMarkersWaiting",
                      self.fires("JasminCreditsLeaseMarkersWaiting", "3")),
            self.case([series("links_given_up_total", RISING)], "30m",
                      "JasminCreditsMessagesLeftUncharged",
                      self.fires("JasminCreditsMessagesLeftUncharged", "15")),
            self.case([series("links_given_up_total", "7x40")], "30m",
                      "JasminCreditsMessagesLeftUncharged"),
            self.case([series("outcomes_given_up_total", RISING)], "30m",
                      "JasminCreditsAnswersLeftUnsettled",
                      self.fires("JasminCreditsAnswersLeftUnsettled", "15")),
            self.case([series("settlement_events_total", RISING, event="submit_sm_resp",
                              outcome="dropped")], "30m",
                      "JasminCreditsSettlementDroppedEvents",
                      self.fires("JasminCreditsSettlementDroppedEvents", "15")),
            self.case([series("settlement_events_total", RISING, event="submit_sm",
                              outcome="requeued")], "10m",
                      "JasminCreditsSettlementWaitsForRedis",
                      self.fires("JasminCreditsSettlementWaitsForRedis")),
            self.case([series("refusals_total", "0+2x40", reason="store_unavailable"),
                       series("refusals_total", "0+9x40", reason="insufficient_credit")],
                      "30m", "JasminCreditsRefusingForStoreErrors",
                      self.fires("JasminCreditsRefusingForStoreErrors", "10")),
            self.case([series("refusals_total", "0+9x40", reason="insufficient_credit")],
                      "30m", "JasminCreditsRefusingForStoreErrors"),
            self.case([series("events_failed_total", RISING, sink="webhook")], "30m",
                      "JasminCreditsEventDeliveryFailing",
                      self.fires("JasminCreditsEventDeliveryFailing", "15", sink="webhook")),
        ]
        cases = self.tmp / "cases.yaml"
        cases.write_text(yaml.safe_dump({"rule_files": [str(RULES)],
                                         "evaluation_interval": "1m", "tests": tests}))
        done = self.run_promtool("test", "rules", str(cases))
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("SUCCESS", done.stdout)

    def test_a_wrong_expectation_fails(self):
        """(promtool's verdict above can go either way.)"""
        tests = [self.case([series("links_given_up_total", "7x40")], "30m",
                           "JasminCreditsMessagesLeftUncharged",
                           self.fires("JasminCreditsMessagesLeftUncharged", "15"))]
        cases = self.tmp / "wrong.yaml"
        cases.write_text(yaml.safe_dump({"rule_files": [str(RULES)],
                                         "evaluation_interval": "1m", "tests": tests}))
        self.assertNotEqual(self.run_promtool("test", "rules", str(cases)).returncode, 0)
