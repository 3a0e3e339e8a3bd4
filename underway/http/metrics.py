"""`GET /metrics` in the Prometheus text format, through `prometheus_client`.

Each API has a registry of its own (no global one) holding one collector that reads
on scrape, through `Underway`'s public methods only:

- `underway_jobs{state}`: jobs in the store by state (exact, `uw.count`);
- `underway_task_jobs{task,state}`: the same per task, from the newest `scan` jobs of
  each state (`underway_task_jobs_truncated{state}` is 1 where there were more);
- `underway_job_outcomes_total{task,outcome}`: finished jobs this process has seen
  (succeeded, failed, cancelled), each counted once;
- `underway_job_queue_wait_seconds{task}` and `underway_job_run_seconds{task}`:
  histograms of created-to-started and started-to-finished, observed with the outcome;
- HTTP requests by route and status, open event streams, when the API started.

A scrape costs `uw.count` per state plus a few `uw.list_jobs` pages per state.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..records import TERMINAL, JobRecord, State

if TYPE_CHECKING:
    from .handlers import Api

MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
SCAN = 1000  # jobs read per state and scrape, at most
PAGE = 500
_REMEMBER = 100_000  # finished job ids remembered, so that each is counted once


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: over every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class JobsCollector(Collector):
    """Reads the jobs on each scrape; keeps only counters between scrapes."""

    def __init__(self, api: Api, *, scan: int = SCAN) -> None:
        self.api = api
        self.scan = scan
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._outcomes: Counter[tuple[str, str]] = Counter()
        self._waits: dict[str, _Histogram] = {}
        self._runs: dict[str, _Histogram] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collect() reads the store: not at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # one scrape at a time: the outcome bookkeeping is shared
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        uw = self.api.uw
        totals = GaugeMetricFamily(
            "underway_jobs", "Jobs in the store, by state.", labels=["state"]
        )
        per_task = GaugeMetricFamily(
            "underway_task_jobs",
            "Jobs by task and state, among the newest scanned of each state.",
            labels=["task", "state"],
        )
        truncated = GaugeMetricFamily(
            "underway_task_jobs_truncated",
            "1 when a state had more jobs than one scrape reads (per-task counts are partial).",
            labels=["state"],
        )
        for state in State:
            totals.add_metric([state.value], uw.count(state=state))
            records, more = self._scan(state)
            truncated.add_metric([state.value], 1 if more else 0)
            tally = Counter(r.task for r in records)
            for task in sorted(set(uw.tasks) | set(tally)):
                per_task.add_metric([task, state.value], tally.get(task, 0))
            if state in TERMINAL:
                for record in records:
                    self._observe(record)
        yield totals
        yield per_task
        yield truncated
        yield from self._outcome_metrics()
        yield from self._api_metrics()

    def _scan(self, state: State) -> tuple[list[JobRecord], bool]:
        records: list[JobRecord] = []
        cursor: str | None = None
        while len(records) < self.scan:
            page = self.api.uw.list_jobs(
                state=state, limit=min(PAGE, self.scan - len(records)), cursor=cursor
            )
            records.extend(page.jobs)
            cursor = page.next_cursor
            if cursor is None:
                return records, False
        return records, True

    def _observe(self, record: JobRecord) -> None:
        if record.id in self._seen:
            return
        self._seen[record.id] = None
        if len(self._seen) > _REMEMBER:
            self._seen.popitem(last=False)
        self._outcomes[(record.task, record.state.value)] += 1
        if record.started_at is not None:
            wait = max(0.0, record.started_at - record.created_at)
            self._waits.setdefault(record.task, _Histogram()).observe(wait)
            if record.finished_at is not None:
                run = max(0.0, record.finished_at - record.started_at)
                self._runs.setdefault(record.task, _Histogram()).observe(run)

    def _outcome_metrics(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "underway_job_outcomes",
            "Finished jobs seen by this process, by task and outcome.",
            labels=["task", "outcome"],
        )
        for (task, outcome), n in sorted(self._outcomes.items()):
            outcomes.add_metric([task, outcome], n)
        yield outcomes
        for name, text, histograms in (
            ("underway_job_queue_wait_seconds", "From submission to start.", self._waits),
            ("underway_job_run_seconds", "From start to finish.", self._runs),
        ):
            family = HistogramMetricFamily(name, text, labels=["task"])
            for task, histogram in sorted(histograms.items()):
                family.add_metric([task], histogram.buckets(), histogram.total)
            yield family

    def _api_metrics(self) -> Iterator[Metric]:
        api = self.api
        yield GaugeMetricFamily("underway_tasks", "Registered tasks.", value=len(api.uw.tasks))
        requests = CounterMetricFamily(
            "underway_http_requests",
            "HTTP API requests answered, by route and status.",
            labels=["route", "status"],
        )
        for (route, status), n in sorted(api.counts().items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        yield GaugeMetricFamily(
            "underway_sse_connections", "Open event streams.", value=api.sse_connections
        )
        yield GaugeMetricFamily(
            "underway_http_started_seconds",
            "When this API started (epoch seconds).",
            value=api.started,
        )


def make_registry(api: Api) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(api))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
