"""Prometheus metrics of jasmin-credits, in the text exposition format (version 0.0.4).

A small registry of our own (counters, gauges, one histogram; no new dependency), the
instruments :class:`CreditMetrics` defines, and the twisted.web resources serving them:

- in our jasmind launcher, :func:`install_metrics` wraps Jasmin's own ``/metrics`` on the
  HTTP API (1401) so one scrape returns Jasmin's figures followed by ours;
- the drop-in interceptord serves :class:`MetricsResource` alone on its metrics port.

Metrics (all names start with ``jasmin_credits_``):

==========================================  =========  =====================================
``charges_total{country}``                  counter    messages accepted and charged (held)
``credits_charged_total{country}``          counter    credits held for them, in credits
                                                       (units / 10**decimals), before refunds
``refusals_total{reason}``                  counter    refused messages (errors.Refusal label)
``refunds_total{cause}``                    counter    refunds by settlement: ``submit_error``
                                                       (an error response), ``dlr`` (a receipt)
``open_reservations``                       gauge      unsettled reservations, read at scrape
``store_call_seconds``                      histogram  latency of each Lua store operation
``plan_runs_total{kind}``                   counter    applied plan runs (scheduled, threshold)
``events_published_total{sink}``            counter    outbox events delivered (amqp, webhook)
``events_failed_total{sink}``               counter    deliveries given up after retries
``link_retries_total``                      counter    links at queueing time retried (Redis
                                                       unavailable, or an unexpected error)
``links_given_up_total``                    counter    holds left unlinked after every retry
``outcome_retries_total``                   counter    SMSC answers and receipts settled in
                                                       process retried (as links)
``outcomes_given_up_total``                 counter    answers and receipts left unsettled
                                                       after every retry
``settlement_events_total{event,outcome}``  counter    Jasmin events settlement read from
                                                       its queues, by what became of them
                                                       (``dropped``: given up after every
                                                       attempt)
``lease_requests_total{outcome}``           counter    credit lease requests: ``granted``,
                                                       ``refused``, ``unavailable`` (Redis)
``lease_messages_total``                    counter    messages held from leases in memory
``leases_open``                             gauge      leases this process holds now
``lease_credits_unused``                    gauge      credits unused in them (reserved)
``lease_markers_waiting``                   gauge      end markers waiting for the broker
==========================================  =========  =====================================

Counters count what this process did since it started (each gateway exposes its own;
Prometheus sums them); ``open_reservations`` reads Redis, so every gateway shows the same
figure; the lease figures are the process's own (jasmind's in our launcher, the drop-in
interceptord's). A
gateway whose settlement runs in its ``jasmin-credits-settled`` child (the default) adds the
child's counters and histogram to its own (:class:`Snapshot`, sent by the child every second,
:mod:`jasmin_credits.child_metrics`), so one scrape of the gateway shows all its work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

PREFIX = "jasmin_credits_"
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        key = tuple(str(v) for v in labels)
        if len(key) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {key}")
        return key

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self, values: Any = None) -> list[str]:
        """The metric's lines, for ``values`` (a :class:`Snapshot` entry: this metric's and
        other processes' added up) or, by default, this process's own."""
        raise NotImplementedError


class Counter(_Metric):
    """A value that only goes up."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self.values: dict[tuple[str, ...], float] = {}
        if not self.label_names:
            self.values[()] = 0.0

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def samples(self, values: Mapping[tuple[str, ...], float] | None = None) -> list[str]:
        values = self.values if values is None else values
        # (another process's labels that do not fit this metric are left out)
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}"
                for k, v in sorted(values.items()) if len(k) == len(self.label_names)]


class Gauge(Counter):
    """A value that goes up and down (or is set when scraped)."""

    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        self.values[self._key(labels)] = float(value)


class Reading(_Metric):
    """One value without labels, read when rendered from something that keeps it (a
    counter or gauge of this process alone: never part of a :class:`Snapshot`)."""

    def __init__(self, name: str, help_text: str, kind: str, read: Callable[[], float]):
        super().__init__(name, help_text)
        self.kind = kind
        self.read = read

    def samples(self, values: Any = None) -> list[str]:
        return [f"{self.name} {_number(self.read())}"]


class Histogram(_Metric):
    """Observations counted in cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float] = DEFAULT_BUCKETS):
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def samples(self, values: tuple[tuple[int, ...], float, int] | None = None) -> list[str]:
        counts, total, count = values or (self.counts, self.sum, self.count)
        lines, running = [], 0
        for bound, n in zip(self.buckets, counts, strict=True):
            running += n
            le = "+Inf" if bound == math.inf else repr(float(bound))
            lines.append(f'{self.name}_bucket{{le="{le}"}} {running}')
        lines.append(f"{self.name}_sum {_number(total)}")
        lines.append(f"{self.name}_count {count}")
        return lines


@dataclass
class Snapshot:
    """The counters and histograms of a registry as plain values: what
    ``jasmin-credits-settled`` sends the gateway that started it, which adds them to its own
    at every scrape. Gauges are left out (each process reads those itself).

    ``counters``: name -> label values -> value; ``histograms``: name -> (bucket counts,
    not cumulative; sum; count).
    """

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    histograms: dict[str, tuple[tuple[int, ...], float, int]] = field(default_factory=dict)

    def plus(self, other: Snapshot) -> Snapshot:
        """Both added up, value by value."""
        counters = {name: dict(values) for name, values in self.counters.items()}
        for name, values in other.counters.items():
            mine = counters.setdefault(name, {})
            for key, value in values.items():
                mine[key] = mine.get(key, 0.0) + value
        histograms = dict(self.histograms)
        for name, theirs in other.histograms.items():
            mine = histograms.get(name)
            if mine is None:
                histograms[name] = theirs
            elif len(mine[0]) == len(theirs[0]):  # other buckets: not comparable, left out
                histograms[name] = (tuple(a + b for a, b in zip(mine[0], theirs[0],
                                                                strict=True)),
                                    mine[1] + theirs[1], mine[2] + theirs[2])
        return Snapshot(counters, histograms)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: ``{"counters": {name: [[label, ..., value]]}, "histograms": {name:
        [[counts], sum, count]}}``."""
        return {"counters": {name: [[*key, value] for key, value in sorted(values.items())]
                             for name, values in self.counters.items()},
                "histograms": {name: [list(counts), total, count]
                               for name, (counts, total, count) in self.histograms.items()}}

    @classmethod
    def from_json(cls, data: Any) -> Snapshot:
        """The inverse of :meth:`to_json`; ValueError naming what is malformed."""
        if not isinstance(data, dict):
            raise ValueError("a metrics snapshot must be an object")
        counters: dict[str, dict[tuple[str, ...], float]] = {}
        for name, rows in _entries(data, "counters"):
            values = counters[name] = {}
            for row in rows if isinstance(rows, list) else [None]:
                if (not isinstance(row, list) or not row or not _is_number(row[-1])
                        or not all(isinstance(v, str) for v in row[:-1])):
                    raise ValueError(f"counter {name}: rows must be [label, ..., value]")
                values[tuple(row[:-1])] = float(row[-1])
        histograms: dict[str, tuple[tuple[int, ...], float, int]] = {}
        for name, value in _entries(data, "histograms"):
            if (not isinstance(value, list) or len(value) != 3
                    or not isinstance(value[0], list)
                    or not all(isinstance(n, int) for n in value[0])
                    or not _is_number(value[1]) or not isinstance(value[2], int)):
                raise ValueError(f"histogram {name}: must be [[counts], sum, count]")
            histograms[name] = (tuple(value[0]), float(value[1]), value[2])
        return cls(counters, histograms)


def _entries(data: dict[str, Any], part: str) -> list[tuple[str, Any]]:
    entries = data.get(part, {})
    if not isinstance(entries, dict) or not all(isinstance(k, str) for k in entries):
        raise ValueError(f"a metrics snapshot's {part} must be an object by name")
    return list(entries.items())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Registry:
    """Metrics by name, rendered in registration order."""

    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}
        self.sources: list[Callable[[], Snapshot]] = []
        """Other processes' figures (:class:`Snapshot`), added to ours when rendered."""

    def _add(self, metric: Any) -> Any:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels))

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labels))

    def histogram(self, name: str, help_text: str,
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help_text, buckets))

    def reading(self, name: str, help_text: str, kind: str,
                read: Callable[[], float]) -> Reading:
        return self._add(Reading(name, help_text, kind, read))

    def snapshot(self) -> Snapshot:
        """This registry's own counters and histograms (sources not included)."""
        snap = Snapshot()
        for metric in self.metrics.values():
            if type(metric) is Counter:
                snap.counters[metric.name] = dict(metric.values)
            elif isinstance(metric, Histogram):
                snap.histograms[metric.name] = (tuple(metric.counts), metric.sum, metric.count)
        return snap

    def render(self) -> str:
        """Every metric in the Prometheus text format, ending with a newline: ours plus
        what each of :attr:`sources` reports."""
        totals = self.snapshot()
        for source in self.sources:
            totals = totals.plus(source())
        lines: list[str] = []
        for metric in self.metrics.values():
            lines += metric.header()
            if type(metric) is Counter:
                lines += metric.samples(totals.counters[metric.name])
            elif isinstance(metric, Histogram):
                lines += metric.samples(totals.histograms[metric.name])
            else:
                lines += metric.samples()
        return "\n".join(lines) + "\n"


class NoMetrics:
    """The default of every ``metrics`` argument: records nothing."""

    def charged(self, country: str, units: int) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def refunded(self, cause: str) -> None:
        pass

    def plan_run(self, kind: str) -> None:
        pass

    def event_published(self, sink: str) -> None:
        pass

    def event_failed(self, sink: str) -> None:
        pass

    def link_retried(self) -> None:
        pass

    def link_given_up(self) -> None:
        pass

    def outcome_retried(self) -> None:
        pass

    def outcome_given_up(self) -> None:
        pass

    def settlement_event(self, event: str, outcome: str) -> None:
        pass

    def observe_store_call(self, seconds: float) -> None:
        pass

    def lease_request(self, outcome: str) -> None:
        pass


NO_METRICS = NoMetrics()


class CreditMetrics(NoMetrics):
    """Our instruments. ``decimals`` converts credit units into credits for
    ``credits_charged_total``. ``open_reservations`` is refreshed by :meth:`refresh` from
    the store given to :meth:`watch_store`."""

    def __init__(self, decimals: int = 4, registry: Registry | None = None):
        self.decimals = decimals
        self.registry = r = registry or Registry()
        p = PREFIX
        self.charges = r.counter(p + "charges_total",
                                 "Messages accepted and charged, by destination country.",
                                 ("country",))
        self.credits = r.counter(p + "credits_charged_total",
                                 "Credits held for accepted messages (in credits), by country.",
                                 ("country",))
        self.refusals = r.counter(p + "refusals_total", "Refused messages, by reason.",
                                  ("reason",))
        self.refunds = r.counter(p + "refunds_total", "Refunds made by settlement, by cause.",
                                 ("cause",))
        self.open = r.gauge(p + "open_reservations",
                            "Unsettled reservations (all gateways, read at scrape time).")
        self.store_calls = r.histogram(p + "store_call_seconds",
                                       "Latency of credit store operations (Lua calls).")
        self.plan_runs = r.counter(p + "plan_runs_total", "Applied top-up plan runs, by kind.",
                                   ("kind",))
        self.published = r.counter(p + "events_published_total",
                                   "Outbox events delivered, by sink.", ("sink",))
        self.failed = r.counter(p + "events_failed_total",
                                "Outbox event deliveries given up, by sink.", ("sink",))
        self.link_retries = r.counter(
            p + "link_retries_total",
            "Links of a hold to its message id at queueing time retried (store unavailable, or "
            "an unexpected error).")
        self.links_given_up = r.counter(
            p + "links_given_up_total",
            "Holds left unlinked to their message id after every retry (not charged).")
        self.outcome_retries = r.counter(
            p + "outcome_retries_total",
            "SMSC answers and delivery receipts settled in process retried (store "
            "unavailable, or an unexpected error).")
        self.outcomes_given_up = r.counter(
            p + "outcomes_given_up_total",
            "SMSC answers and delivery receipts left unsettled after every retry (the sweeper "
            "settles those messages).")
        self.settlement_events = r.counter(
            p + "settlement_events_total",
            "Jasmin events settlement read from its queues, by event and what became of "
            "them (dropped: given up after every attempt).", ("event", "outcome"))
        self.lease_requests = r.counter(
            p + "lease_requests_total",
            "Credit lease requests of this process, by outcome (granted; refused: the wallet "
            "or a limit could not spare a lease; unavailable: Redis did not answer).",
            ("outcome",))
        self._leases: Any = None
        leases = self._from_leases
        r.reading(p + "lease_messages_total",
                  "Messages this process held from credit leases, in its memory.", "counter",
                  leases(lambda book: book.held))
        r.reading(p + "leases_open", "Credit leases this process holds now.", "gauge",
                  leases(lambda book: len(book.open())))
        r.reading(p + "lease_credits_unused",
                  "Credits still unused in the credit leases this process holds now (reserved "
                  "in their wallets).", "gauge",
                  leases(lambda book: sum(lease.left for lease in book.open())
                         / 10**self.decimals))
        r.reading(p + "lease_markers_waiting",
                  "Credit lease end markers waiting for the broker (published again once it "
                  "is back).", "gauge", leases(lambda book: book.markers_waiting()))
        self._store: Any = None

    # -- hooks --------------------------------------------------------------------------

    def charged(self, country: str, units: int) -> None:
        country = country or "unknown"
        self.charges.inc(country)
        self.credits.inc(country, amount=units / 10**self.decimals)

    def refused(self, reason: str) -> None:
        self.refusals.inc(reason)

    def refunded(self, cause: str) -> None:
        self.refunds.inc(cause)

    def plan_run(self, kind: str) -> None:
        self.plan_runs.inc(kind)

    def event_published(self, sink: str) -> None:
        self.published.inc(sink)

    def event_failed(self, sink: str) -> None:
        self.failed.inc(sink)

    def link_retried(self) -> None:
        self.link_retries.inc()

    def link_given_up(self) -> None:
        self.links_given_up.inc()

    def outcome_retried(self) -> None:
        self.outcome_retries.inc()

    def outcome_given_up(self) -> None:
        self.outcomes_given_up.inc()

    def settlement_event(self, event: str, outcome: str) -> None:
        self.settlement_events.inc(event, outcome)

    def observe_store_call(self, seconds: float) -> None:
        self.store_calls.observe(seconds)

    def lease_request(self, outcome: str) -> None:
        self.lease_requests.inc(outcome)

    # -- credit leases ------------------------------------------------------------------

    def watch_leases(self, book: Any) -> None:
        """Read ``book`` (a :class:`~jasmin_credits.leasing.LeaseBook`) at every scrape."""
        self._leases = book

    def _from_leases(self, read: Callable[[Any], float]) -> Callable[[], float]:
        """A figure read from the watched lease book (0 while there is none)."""
        return lambda: read(self._leases) if self._leases is not None else 0

    # -- the store ----------------------------------------------------------------------

    def watch_store(self, store: Any, timer: Callable[[], float] = time.perf_counter) -> None:
        """Time every Lua operation of ``store`` and read its open reservations at scrape.

        Wraps the store's ``scripts.run`` (the one path of every script call) with a
        callback on its Deferred: no coroutine frame more per call on the message path.
        """
        self._store = store
        run = store.scripts.run

        def timed_run(name: str, keys: list[str], args: list[Any], lazy: bool = False) -> Any:
            started = timer()

            def observe(result: Any) -> Any:
                self.observe_store_call(timer() - started)
                return result

            return run(name, keys, args, lazy).addBoth(observe)

        store.scripts.run = timed_run

    async def refresh(self) -> None:
        """Read the figures that live in Redis (open reservations)."""
        store = self._store
        if store is None:
            return
        total = 0
        for uid in await store.users_with_open_reservations():
            total += int(await store._command("ZCARD", store.keys.open(uid)) or 0)
        self.open.set(total)

    def render(self) -> str:
        return self.registry.render()


class MetricsResource(Resource):
    """``GET`` answers our metrics, after those of ``inner`` (Jasmin's ``/metrics``) if any.

    Redis-backed figures are refreshed first, bounded by ``timeout`` seconds; if Redis does
    not answer the last values are served.
    """

    isLeaf = True

    def __init__(self, metrics: CreditMetrics, inner: Resource | None = None,
                 clock: Any = None, timeout: float = 2.0):
        super().__init__()
        self.metrics = metrics
        self.inner = inner
        self.clock = clock
        self.timeout = timeout

    def render_GET(self, request: Any) -> Any:  # noqa: N802 - twisted.web API
        gone: list[Any] = []
        request.notifyFinish().addBoth(gone.append)
        refresh: Deferred = Deferred.fromCoroutine(_awaited(self.metrics.refresh()))
        if self.clock is not None:
            refresh.addTimeout(self.timeout, self.clock)
        refresh.addErrback(lambda _: None)
        refresh.addCallback(lambda _: None if gone else self._write(request))
        return NOT_DONE_YET

    def _write(self, request: Any) -> None:
        head = b""
        if self.inner is not None:
            try:
                head = self.inner.render_GET(request)
                if not isinstance(head, bytes):
                    head = b""
            except Exception:  # noqa: BLE001 - ours still served
                head = b"# jasmin metrics unavailable\n"
            head = head.rstrip(b"\n") + b"\n" if head.strip() else b""
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(b"content-type", [CONTENT_TYPE])
        request.write(head + self.metrics.render().encode("utf-8"))
        request.finish()


async def _awaited(result: Awaitable[None]) -> None:
    await result


def serve_metrics(reactor: Any, metrics: CreditMetrics, port: int) -> Any:
    """Serve ``metrics`` alone on ``http://127.0.0.1:port/`` (the drop-in interceptord's and
    jasmin-credits-settled's ``--metrics-port``); answers the listening port."""
    from twisted.web.server import Site

    return reactor.listenTCP(port, Site(MetricsResource(metrics, clock=reactor)),
                             interface="127.0.0.1")


def install_metrics(http_api: Any, metrics: CreditMetrics, clock: Any = None) -> Resource:
    """Serve Jasmin's ``/metrics`` followed by ours on Jasmin's HTTP API (Site or resource)."""
    api = getattr(http_api, "resource", http_api)
    inner = getattr(api, "children", {}).get(b"metrics")
    resource = MetricsResource(metrics, inner, clock)
    api.putChild(b"metrics", resource)
    return resource


__all__ = [
    "NO_METRICS", "CreditMetrics", "Counter", "Gauge", "Histogram", "MetricsResource",
    "NoMetrics", "Registry", "Snapshot", "install_metrics", "serve_metrics",
]
