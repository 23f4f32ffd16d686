"""The gitsync HTTP API: a Flask app factory handed the sync engine it reports on.

`create_app(engine, config)` layers defaults, then gitsync's Config, then an
optional test mapping, and registers one blueprint per module: `receiver`
(inbound push webhooks), `status` (status, health, manual sync, the page),
`control` (retry, pause, resume), `metrics` and `peers` (the fleet: peer notifications
and the fleet view, with --peers only). The API drives the engine only through
`SyncController`; it never runs git and never waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

if TYPE_CHECKING:
    from gitsync.config import Config
    from gitsync.fleet import Fleet
    from gitsync.model import Status, SyncResult
    from gitsync.rollout import RolloutResult

    from .deliveries import RecentDeliveries
    from .forges import DeliveryLog
    from .metrics import Metrics
    from .peers import PeerServices

access_log = logging.getLogger("webhook.access")

# Successful answers on these paths are polled by machines (kubelet, Prometheus);
# they are logged at DEBUG so that -v shows them and a normal log stays readable.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# waitress gets a little headroom over the body cap, so that a body just over it
# still reaches the receiver and gets a JSON 413, a log line and a metric.
SERVER_BODY_HEADROOM = 1024 * 1024


class DeployControl(Protocol):
    """What the API may ask of rollouts (gitsync.deploy.Deployer)."""

    def retry(self) -> list[str]: ...
    def set_paused(self, paused: bool) -> None: ...
    def add_listener(self, listener: Callable[[RolloutResult], None]) -> None: ...


class SyncController(Protocol):
    """All the API may ask of the engine."""

    @property
    def deploys(self) -> DeployControl: ...

    def trigger(self, reason: str) -> None: ...
    def status(self) -> Status: ...
    def is_healthy(self) -> bool: ...
    def is_ready(self) -> bool: ...
    def tracks(self, ref: str) -> bool: ...
    def add_listener(self, listener: Callable[[SyncResult], None]) -> None: ...


@dataclass(frozen=True)
class Services:
    """What the blueprints share, kept in `app.extensions["gitsync"]`."""

    engine: SyncController
    deliveries: DeliveryLog
    metrics: Metrics
    peers: PeerServices | None = None   # set when --peers is configured
    recent: RecentDeliveries | None = None   # the last answers of the receiver, for the page


def services() -> Services:
    return current_app.extensions["gitsync"]


def create_app(engine: SyncController, config: Config,
               test_config: Mapping[str, Any] | None = None, fleet: Fleet | None = None) -> Flask:
    """`fleet`: the replica's peers (with --peers); without one the peer endpoints answer 404."""
    from . import control, metrics, peers, receiver, status
    from .deliveries import RecentDeliveries
    from .forges import DeliveryLog

    app = Flask(__name__)
    app.config.from_mapping(
        RECEIVER_SECRET=None, API_TOKEN=None, RECEIVER_MAX_BODY=5 * 1024 * 1024,
        HTTP_METRICS=True, DELIVERY_MEMORY=1000, PAGE_REFRESH_SECONDS=2,
    )
    app.config.from_mapping(
        RECEIVER_SECRET=config.receiver_secret, API_TOKEN=config.api_token,
        RECEIVER_MAX_BODY=config.receiver_max_body, HTTP_METRICS=config.http_metrics,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    # Werkzeug then refuses larger bodies on every endpoint, not only the receiver.
    app.config["MAX_CONTENT_LENGTH"] = app.config["RECEIVER_MAX_BODY"]
    app.config["SERVER_MAX_BODY"] = app.config["RECEIVER_MAX_BODY"] + SERVER_BODY_HEADROOM

    counters = metrics.Metrics(engine)
    if fleet:
        fleet.add_listener(counters.count_peer_sent)
    app.extensions["gitsync"] = Services(
        engine=engine, deliveries=DeliveryLog(app.config["DELIVERY_MEMORY"]), metrics=counters,
        peers=peers.peer_services(fleet, engine) if fleet else None, recent=RecentDeliveries())

    app.register_blueprint(peers.bp if fleet else peers.off)
    app.register_blueprint(receiver.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(control.bp)
    app.register_blueprint(metrics.bp)
    app.register_error_handler(HTTPException, _json_error)
    app.before_request(_start_clock)
    app.after_request(_log_request)
    return app


def _json_error(error: HTTPException):
    """Every error is JSON with a fixed description: nothing from the request is echoed."""
    response = jsonify(error=error.description or error.name)
    response.status_code = error.code or 500
    return response


def _start_clock() -> None:
    g.started = time.perf_counter()
    g.log_fields = {}


def _log_request(response):
    """One line per request; the query string is left out, since it may carry a token."""
    elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    fields = {"method": request.method, "path": request.path, "status": response.status_code,
              "duration_ms": round(elapsed_ms, 1), "remote_addr": request.remote_addr,
              **g.get("log_fields", {})}
    quiet = request.path in QUIET_PATHS and response.status_code < 400
    extra = "".join(f" {key}={value}" for key, value in g.get("log_fields", {}).items())
    access_log.log(logging.DEBUG if quiet else logging.INFO, "%s %s %s %d %.1fms%s",
                   request.remote_addr, request.method, request.path, response.status_code,
                   elapsed_ms, extra, extra={"fields": fields})
    return response
