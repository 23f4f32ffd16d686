"""GET /metrics: Prometheus text, with git-sync's names where the two overlap.

Each app has its own CollectorRegistry, so several apps (in tests, say) never
share or double-register series. Sync counts and durations are fed by an
engine listener; the gauges are read from `engine.status()` at scrape time.
"""

from __future__ import annotations

import resource
import threading
from typing import TYPE_CHECKING

from flask import Blueprint, Response, abort, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from gitsync.rollout import RESULTS as ROLLOUT_RESULTS

from . import services

if TYPE_CHECKING:
    from gitsync.model import SyncResult
    from gitsync.rollout import RolloutResult

    from . import SyncController

bp = Blueprint("metrics", __name__)

# The engine's results in git-sync's words.
SYNC_STATUS = {"published": "success", "unchanged": "noop", "error": "error"}
# From a publish to live (or not): a reload takes a fraction of a second, a timeout 60 s.
ROLLOUT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# git-sync's counters whose names carry no _total (Go's client adds none); prometheus_client
# would add one, so these are written out as text. Names: what the engine reports.
EXACT_COUNTERS = {
    "askpass": ("git_sync_askpass_calls",
                "How many git askpass calls completed, partitioned by state (success, error)"),
    "github_app": ("git_sync_refresh_github_app_token_count",
                   "How many times the GitHub app token was refreshed, partitioned by state "
                   "(success, error)"),
}


class Metrics:
    def __init__(self, engine: SyncController):
        self.registry = CollectorRegistry()
        self.sync_count = Counter(
            "git_sync_count", "How many git syncs completed, partitioned by state (success, error, noop)",
            ["status"], registry=self.registry)
        self.sync_duration = Summary(
            "git_sync_duration_seconds", "Summary of git_sync durations", ["status"],
            registry=self.registry)
        self.webhooks = Counter(
            "gitsync_webhook_requests", "Inbound webhook requests, by forge and result",
            ["forge", "result"], registry=self.registry)
        self.peer_sent = Counter(
            "gitsync_peer_notifications_sent", "Notifications passed on to peers, by result "
            "(sync, ignored, unauthorized, error, unreachable)", ["result"], registry=self.registry)
        self.peer_received = Counter(
            "gitsync_peer_notifications_received", "Notifications received from peers, by result "
            "(sync, rate_limited, already, duplicate, unauthorized, stale, malformed)", ["result"],
            registry=self.registry)
        self.fetch_count = Counter("git_fetch_count", "How many git fetches were run",
                                   registry=self.registry)
        self.scrapes = Counter("promhttp_metric_handler_requests", "Total number of scrapes by "
                               "HTTP status code", ["code"], registry=self.registry)
        self.scrapes_in_flight = Gauge("promhttp_metric_handler_requests_in_flight", "Current "
                                       "number of scrapes being served", registry=self.registry)
        ProcessCollector(registry=self.registry)   # process_*: the names Go's client uses too
        self.registry.register(_AddressSpaceLimit())
        for status in SYNC_STATUS.values():   # zeros from the start, so rate() works at once
            self.sync_count.labels(status)
            self.sync_duration.labels(status)
        for code in ("200", "500", "503"):
            self.scrapes.labels(code)
        self._exact = {(kind, status): 0 for kind in EXACT_COUNTERS for status in ("success", "error")}
        self._exact_lock = threading.Lock()
        self.registry.register(_EngineGauges(engine))
        engine.add_listener(self.observe_sync)
        self._add_rollout_metrics(engine)

    def observe_sync(self, result: SyncResult) -> None:
        # git-sync counts the first sync of each process as a sync that fetched, changed or not.
        status = SYNC_STATUS.get(result.result, "error")
        if result.first and status == "noop":
            status = "success"
        self.sync_count.labels(status).inc()
        self.sync_duration.labels(status).observe(result.duration_ms / 1000)
        if status == "success":
            self.fetch_count.inc()
        with self._exact_lock:
            for kind, outcome in result.auth_calls:
                if (kind, outcome) in self._exact:
                    self._exact[kind, outcome] += 1

    def exact_counters_text(self) -> bytes:
        """git-sync's counters without a _total suffix, in the text format."""
        with self._exact_lock:
            counts = dict(self._exact)
        lines = []
        for kind, (name, documentation) in EXACT_COUNTERS.items():
            lines += [f"# HELP {name} {documentation}", f"# TYPE {name} counter"]
            lines += [f'{name}{{status="{status}"}} {float(counts[kind, status])}'
                      for status in ("error", "success")]
        return ("\n".join(lines) + "\n").encode()

    def count_webhook(self, forge: str, result: str) -> None:
        self.webhooks.labels(forge, result).inc()

    def count_peer_sent(self, result: str) -> None:
        self.peer_sent.labels(result).inc()

    def count_peer_received(self, result: str) -> None:
        self.peer_received.labels(result).inc()

    def _add_rollout_metrics(self, engine: SyncController) -> None:
        self.rollouts = Counter(
            "gitsync_rollouts", "Finished rollouts by result (live, rolled_back, failed, degraded, "
            "superseded)", ["result"], registry=self.registry)
        self.rollout_duration = Histogram(
            "gitsync_rollout_duration_seconds", "From a publish to its rollout's result",
            buckets=ROLLOUT_BUCKETS, registry=self.registry)
        for result in ROLLOUT_RESULTS:
            self.rollouts.labels(result)
        engine.deploys.add_listener(self.observe_rollout)

    def observe_rollout(self, result: RolloutResult) -> None:
        self.rollouts.labels(result.result).inc()
        self.rollout_duration.observe(result.duration_seconds)


class _EngineGauges:
    """Point-in-time values, read from the engine when Prometheus scrapes."""

    def __init__(self, engine: SyncController):
        self._engine = engine

    def describe(self):
        return []   # collected on demand; nothing to check at registration

    def collect(self):
        status = self._engine.status()
        yield _gauge("gitsync_ready", "1 once a commit is published", self._engine.is_ready())
        yield _gauge("gitsync_healthy", "1 while /healthz answers 200", self._engine.is_healthy())
        yield _gauge("gitsync_consecutive_failures", "Syncs failed in a row",
                     status.consecutive_failures)
        yield _gauge("gitsync_last_sync_timestamp_seconds", "When the last sync attempt started",
                     status.last_sync_at.timestamp() if status.last_sync_at else 0)
        yield _gauge("gitsync_last_success_timestamp_seconds",
                     "When the last successful sync started",
                     status.last_success_at.timestamp() if status.last_success_at else 0)
        info = GaugeMetricFamily("gitsync_info", "The running gitsync's version", labels=["version"])
        info.add_metric([status.version], 1)
        yield info


class _AddressSpaceLimit:
    """process_virtual_memory_max_bytes, which Go's process collector has and Python's lacks:
    RLIMIT_AS, with "unlimited" as the largest 64-bit value, as Go reports it."""

    def describe(self):
        return []

    def collect(self):
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        value = float(2 ** 64 - 1) if soft == resource.RLIM_INFINITY else float(soft)
        yield _gauge("process_virtual_memory_max_bytes", "Maximum amount of virtual memory "
                     "available in bytes.", value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


@bp.get("/metrics")
def metrics():
    if not current_app.config["HTTP_METRICS"]:
        abort(404, "metrics are off (--http-metrics=false)")
    metrics = services().metrics
    metrics.scrapes_in_flight.inc()
    try:
        data = generate_latest(metrics.registry) + metrics.exact_counters_text()
    finally:
        metrics.scrapes_in_flight.dec()
    metrics.scrapes.labels("200").inc()   # after the text, as Go's handler counts it
    return Response(data, content_type=CONTENT_TYPE_LATEST)
