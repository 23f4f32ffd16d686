"""What the engine is doing, for machines and people; and the manual sync.

GET /api/v1/status, /healthz, /readyz, / (the page) and POST /api/v1/sync.
Everything shown comes from `engine.status()`, whose repo URL and errors the
engine has already cleaned of credentials, and from the receiver's recent answers
(webhook.deliveries), which hold no secrets.
"""

from __future__ import annotations

import hmac
from datetime import datetime

from flask import Blueprint, current_app, jsonify, render_template, request, url_for

from gitsync.model import utc_now

from . import services

bp = Blueprint("status", __name__)

# The page runs only its own script and talks only to this server.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def status_data() -> dict:
    """The engine's status, plus what only the API knows: the receiver's recent answers."""
    recent = services().recent
    return {**services().engine.status().to_dict(),
            "deliveries": recent.newest_first() if recent is not None else []}


@bp.get("/api/v1/status")
def status_json():
    response = jsonify(status_data())
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz():
    engine = services().engine
    status = engine.status()
    healthy = engine.is_healthy()
    body = {"status": "ok" if healthy else "unhealthy", "state": status.state,
            "consecutive_failures": status.consecutive_failures,
            "last_sync_at": status.to_dict()["last_sync_at"]}
    return jsonify(body), 200 if healthy else 503


@bp.get("/readyz")
def readyz():
    engine = services().engine
    ready = engine.is_ready()
    body = {"status": "ready" if ready else "not ready", "commit": engine.status().commit}
    return jsonify(body), 200 if ready else 503


@bp.post("/api/v1/sync")
def sync_now():
    refused = refuse_without_token()
    if refused is not None:
        return refused
    services().engine.trigger("manual")
    return jsonify(result="sync started"), 202


def refuse_without_token():
    """The answer to a control request without the API token (404: no token configured,
    401: a missing or wrong one); None when the request may go on."""
    token = current_app.config["API_TOKEN"]
    if not token:
        return jsonify(error="the control API is off: no API token is configured"), 404
    if not _bearer_matches(token):
        response = jsonify(error="missing or invalid bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="gitsync"'
        return response, 401
    return None


def _bearer_matches(token: str) -> bool:
    scheme, _, sent = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(_header_bytes(sent.strip()), token.encode("utf-8"))


def _header_bytes(value: str) -> bytes:
    """Undo WSGI's latin-1 decoding, so a non-ASCII token compares byte for byte."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


@bp.get("/")
def page():
    """The page, with git-sync's status code for `/`: 503 until the first publish, then 200
    (probes written for git-sync point at `/`)."""
    engine = services().engine
    response = current_app.make_response((render_template(
        "status.html", status=status_data(), now=utc_now(),
        receiver_on=bool(current_app.config["RECEIVER_SECRET"]),
        refresh_ms=int(current_app.config["PAGE_REFRESH_SECONDS"] * 1000),
        fleet_url=url_for("peers.fleet_view") if services().peers else None),
        200 if engine.is_ready() else 503))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


# Times on the page: one zone, UTC, said so, and how long ago; status.js words them alike.
@bp.app_template_filter("utc")
def utc_text(value: str) -> str:
    return value[:19].replace("T", " ") + " UTC"


@bp.app_template_filter("relative")
def relative_text(value: str, now: datetime) -> str:
    seconds = (now - datetime.fromisoformat(value)).total_seconds()
    span = abs(seconds)
    if span < 60:
        amount = f"{int(span)} s"
    elif span < 3600:
        amount = f"{int(span // 60)} min"
    elif span < 48 * 3600:
        amount = f"{int(span // 3600)} h"
    else:
        amount = f"{int(span // 86400)} days"
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"
