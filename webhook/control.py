"""Deploy control: retry a commit marked bad, pause and resume publishing.

POST /api/v1/retry, /api/v1/pause and /api/v1/resume take the API token exactly as
POST /api/v1/sync does (404 without one configured, 401 for a missing or wrong one).
They edit what rollouts keep through `engine.deploys` and never wait for git.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from . import services
from .status import refuse_without_token

bp = Blueprint("control", __name__)


@bp.post("/api/v1/retry")
def retry():
    refused = refuse_without_token()
    if refused is not None:
        return refused
    cleared = services().engine.deploys.retry()
    return jsonify(result="sync started", cleared=cleared), 202


@bp.post("/api/v1/pause")
def pause():
    return _set_paused(True)


@bp.post("/api/v1/resume")
def resume():
    return _set_paused(False)


def _set_paused(paused: bool):
    refused = refuse_without_token()
    if refused is not None:
        return refused
    services().engine.deploys.set_paused(paused)
    return jsonify(result="paused" if paused else "resumed", paused=paused), 200
