"""POST /api/v1/webhook: one URL for every forge's push webhooks.

The receiver only decides and enqueues: a verified push to the tracked ref
calls `engine.trigger("webhook")`, which returns at once, so the answer never
waits for git. The payload's SHA is only a hint; the engine fetches the ref's
real head itself.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from . import services
from .forges import Delivery, DeliveryRejected, parse_delivery

bp = Blueprint("receiver", __name__)

READ_CHUNK = 64 * 1024
UNKNOWN_FORGE = "unknown"


@bp.post("/api/v1/webhook")
def receive():
    secret = current_app.config["RECEIVER_SECRET"]
    if not secret:
        return _answer(404, UNKNOWN_FORGE, "disabled",
                       {"error": "the webhook receiver is off: no receiver secret is configured"})
    body = _read_capped_body(current_app.config["RECEIVER_MAX_BODY"])
    if body is None:
        return _answer(413, UNKNOWN_FORGE, "too_large",
                       {"error": "the body is larger than the receiver accepts"})
    try:
        delivery = parse_delivery(dict(request.headers), body, secret)
    except DeliveryRejected as rejected:
        result = "unauthorized" if rejected.status == 401 else "malformed"
        return _answer(rejected.status, UNKNOWN_FORGE, result, {"error": rejected.reason})
    if services().deliveries.seen_before(delivery.delivery_id):
        return _ignored(delivery, "duplicate", "duplicate delivery: this delivery id was seen before")
    if delivery.kind == "ping":
        return _ignored(delivery, "ping", f"{delivery.event} event: the webhook works; nothing to sync")
    if delivery.kind != "push":
        return _ignored(delivery, "other_event", f"{delivery.event!r} is not a push event")
    return _route_push(delivery)


def _route_push(delivery: Delivery):
    engine = services().engine
    tracked = [change for change in delivery.changes if engine.tracks(change.ref)]
    pushed = [change for change in tracked if not change.deleted]
    if pushed:
        engine.trigger("webhook")
        _pass_on(pushed[-1], delivery)
        return _answer(202, delivery.forge, "sync", {
            "result": "sync started", "forge": delivery.forge, "event": delivery.event,
            "ref": pushed[-1].ref, "hint": pushed[-1].after}, ref=pushed[-1].ref)
    if tracked:
        return _ignored(delivery, "deleted", f"the tracked ref {tracked[0].ref} was deleted; "
                                             "the published commit stays")
    refs = ", ".join(change.ref for change in delivery.changes) or "no git refs"
    status = engine.status()
    tracked_ref = status.tracked_ref or status.ref
    return _ignored(delivery, "other_ref", f"push to {refs}, not to the tracked ref {tracked_ref}",
                    ref=delivery.changes[0].ref if delivery.changes else None)


def _pass_on(change, delivery: Delivery) -> None:
    """Tell the peers (with --peers); returns at once, the calls run in the fleet's pool."""
    peers = services().peers
    if peers is not None:
        peers.fleet.notify(change.after, change.ref, delivery.delivery_id)


def _read_capped_body(limit: int) -> bytes | None:
    """The body, or None once it is over `limit`: never reads more than limit + 1 bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    # Not request.stream: it stops at MAX_CONTENT_LENGTH (= limit) and raises when
    # asked for the one byte that tells a body of exactly `limit` from a longer one.
    stream = get_input_stream(request.environ, max_content_length=limit + 1)
    chunks, size = [], 0
    try:
        while size <= limit:
            chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except RequestEntityTooLarge:   # Werkzeug's own cap on a chunked body
        return None
    return None if size > limit else b"".join(chunks)


def _ignored(delivery: Delivery, result: str, reason: str, ref: str | None = None):
    return _answer(200, delivery.forge, result, {
        "result": "ignored", "reason": reason, "forge": delivery.forge, "event": delivery.event},
        ref=ref)


def _answer(status: int, forge: str, result: str, body: dict, ref: str | None = None):
    """The JSON answer; counted by forge and result, which the access log line also carries,
    and kept among the recent deliveries the status page shows."""
    services().metrics.count_webhook(forge, result)
    recent = services().recent
    if recent is not None:
        recent.record(forge, result, status, event=body.get("event"), ref=ref)
    g.log_fields = {**g.get("log_fields", {}), "forge": forge, "result": result}
    response = jsonify(body)
    response.status_code = status
    return response
