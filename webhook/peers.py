"""POST /api/v1/peer/sync and GET /api/v1/fleet: the replicas of one app together.

Registered only when the app is handed a Fleet (gitsync's CLI builds one from
--peers). A peer's notification is verified (signature, timestamp, delivery id)
and only asks for a sync: the engine still learns the commit from the remote,
and a notification is never passed on. Even valid calls start syncs at a
bounded rate (`SyncLimiter`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flask import Blueprint, g, jsonify, request

from gitsync.fleet import SIGNATURE_HEADER, TIMESTAMP_HEADER, Fleet, PeerRejected, RecentIds, SyncLimiter

from . import services

bp = Blueprint("peers", __name__)
off = Blueprint("peers_off", __name__)   # registered instead of `bp` without --peers

MAX_PEER_BODY = 16 * 1024


@dataclass(frozen=True)
class PeerServices:
    fleet: Fleet
    recent: RecentIds
    limiter: SyncLimiter


def peer_services(fleet: Fleet, engine) -> PeerServices:
    return PeerServices(fleet=fleet, recent=RecentIds(),
                        limiter=SyncLimiter(lambda: engine.trigger("peer")))


@off.route("/api/v1/peer/sync", methods=["POST"])
@off.route("/api/v1/fleet", methods=["GET"])
def fleet_off():
    return jsonify(error="the fleet is off: no --peers are configured"), 404


@bp.post("/api/v1/peer/sync")
def peer_sync():
    body = request.get_data(cache=False)[:MAX_PEER_BODY + 1]
    try:
        _peers().fleet.verify(request.headers.get(TIMESTAMP_HEADER),
                              request.headers.get(SIGNATURE_HEADER), body)
    except PeerRejected as rejected:
        return _answer(401, rejected.result, {"error": rejected.reason})
    notice = _parse_notice(body)
    if notice is None:
        return _answer(400, "malformed", {"error": "the body is not a peer notification"})
    g.log_fields = {**g.get("log_fields", {}), "origin": notice["origin"]}
    peers = _peers()
    if peers.recent.seen_before(notice["delivery"]):
        return _answer(200, "duplicate", {"result": "ignored",
                                          "reason": "this delivery was seen before"})
    if notice["commit"] and services().engine.status().commit == notice["commit"]:
        return _answer(200, "already", {"result": "ignored",
                                        "reason": "already published", "commit": notice["commit"]})
    outcome = peers.limiter.request()
    if outcome == "started":
        return _answer(202, "sync", {"result": "sync started"})
    return _answer(202, "rate_limited", {"result": "sync scheduled",
                                         "reason": "syncs are rate-limited; one follows shortly"})


def _parse_notice(body: bytes) -> dict | None:
    if len(body) > MAX_PEER_BODY:
        return None
    try:
        notice = json.loads(body)
    except ValueError:
        return None
    if not isinstance(notice, dict) or not isinstance(notice.get("delivery"), str) \
            or not notice["delivery"]:
        return None
    commit = notice.get("commit")
    if commit is not None and not isinstance(commit, str):
        return None
    return {"delivery": notice["delivery"], "commit": commit,
            "origin": str(notice.get("origin", ""))[:100]}


@bp.get("/api/v1/fleet")
def fleet_view():
    own = services().engine.status().to_dict()
    response = jsonify(_peers().fleet.view(own))
    response.headers["Cache-Control"] = "no-store"
    return response


def _peers() -> PeerServices:
    peers = services().peers
    assert peers is not None, "the peers blueprint is registered only with --peers"
    return peers


def _answer(status: int, result: str, body: dict):
    services().metrics.count_peer_received(result)
    g.log_fields = {**g.get("log_fields", {}), "peer_result": result}
    response = jsonify(body)
    response.status_code = status
    return response
