"""GET /metrics: Prometheus text, with git-sync's names where the two overlap.

Each app has its own CollectorRegistry, so several apps (in tests, say) never
share or double-register series. Sync counts and durations are fed by an
engine listener; the gauges are read from `engine.status()` at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, abort, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
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
        for status in SYNC_STATUS.values():   # zeros from the start, so rate() works at once
            self.sync_count.labels(status)
            self.sync_duration.labels(status)
        self.registry.register(_EngineGauges(engine))
        engine.add_listener(self.observe_sync)
        self._add_rollout_metrics(engine)

    def observe_sync(self, result: SyncResult) -> None:
        status = SYNC_STATUS.get(result.result, "error")
        self.sync_count.labels(status).inc()
        self.sync_duration.labels(status).observe(result.duration_ms / 1000)

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


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


@bp.get("/metrics")
def metrics():
    if not current_app.config["HTTP_METRICS"]:
        abort(404, "metrics are off (--http-metrics=false)")
    data = generate_latest(services().metrics.registry)
    return Response(data, content_type=CONTENT_TYPE_LATEST)
