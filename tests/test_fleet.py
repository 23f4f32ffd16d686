"""gitsync/fleet.py on its own: signing, replay memory, the sync limiter, finding
peers through the system resolver, and notifying real HTTP peers in parallel."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.waiting import wait_for

from gitsync.config import Peers
from gitsync.fleet import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Fleet,
    PeerFinder,
    PeerRejected,
    RecentIds,
    SyncLimiter,
    signature,
    signed_headers,
    summarize,
    verify,
)

SECRET = b"peer-secret-5c1e"
BODY = b'{"commit": "abc", "ref": "refs/heads/main", "delivery": "d1", "origin": "x"}'


# -- signing ---------------------------------------------------------------------

def test_a_signed_call_verifies():
    headers = signed_headers(SECRET, BODY)
    verify(SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], BODY)


def test_signature_is_hmac_of_timestamp_dot_body():
    import hashlib
    import hmac
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, "1700000000", BODY) == "sha256=" + expected


@pytest.mark.parametrize("change", ["secret", "body", "timestamp", "missing", "garbage"])
def test_tampered_calls_are_refused(change):
    headers = signed_headers(SECRET, BODY)
    timestamp, sent, body, secret = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], BODY, SECRET
    if change == "secret":
        secret = b"another-secret"
    elif change == "body":
        body = BODY.replace(b"abc", b"abd")
    elif change == "timestamp":
        timestamp = str(int(timestamp) + 1)
    elif change == "missing":
        sent = None
    else:
        sent = "sha256=zz\u00e9"
    with pytest.raises(PeerRejected) as refused:
        verify(secret, timestamp, sent, body)
    assert refused.value.result == "unauthorized"


@pytest.mark.parametrize("offset", [-61, 61, -3600])
def test_a_timestamp_more_than_a_minute_off_is_stale(offset):
    now = time.time()
    headers = signed_headers(SECRET, BODY, now=now + offset)
    with pytest.raises(PeerRejected) as refused:
        verify(SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], BODY, now=now)
    assert refused.value.result == "stale"


def test_a_timestamp_within_a_minute_is_accepted():
    now = time.time()
    for offset in (-59, 59):
        headers = signed_headers(SECRET, BODY, now=now + offset)
        verify(SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], BODY, now=now)


def test_recent_ids_remember_and_forget_the_oldest():
    recent = RecentIds(size=2)
    assert not recent.seen_before("a")
    assert recent.seen_before("a")
    assert not recent.seen_before("b")
    assert not recent.seen_before("c")     # pushes "a" out
    assert not recent.seen_before("a")


# -- the limiter -------------------------------------------------------------------

def test_limiter_starts_a_burst_then_schedules_one_sync():
    fired = []
    limiter = SyncLimiter(lambda: fired.append(time.monotonic()), rate=20.0, burst=3)
    outcomes = [limiter.request() for _ in range(10)]
    assert outcomes[:3] == ["started"] * 3
    assert outcomes[3] == "scheduled"
    assert set(outcomes[4:]) == {"already_scheduled"}
    wait_for(lambda: len(fired) == 4, message="the scheduled sync")
    limiter.cancel()


def test_limiter_never_exceeds_its_rate():
    fired = []
    limiter = SyncLimiter(lambda: fired.append(1), rate=5.0, burst=2)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        limiter.request()
    elapsed = time.monotonic() - started
    limiter.cancel()
    assert len(fired) <= 2 + 5 * elapsed + 1


# -- finding peers -------------------------------------------------------------------

def test_dns_peers_come_from_the_system_resolver():
    finder = PeerFinder(Peers("localhost", 8080), ("192.0.2.1", 8080))
    assert ("127.0.0.1", 8080) in finder.replicas()


def test_own_address_is_skipped():
    peers = Peers(None, None, (("127.0.0.2", 9001), ("127.0.0.3", 9001), ("127.0.0.2", 9002)))
    finder = PeerFinder(peers, ("127.0.0.2", 9001))
    assert finder.others() == [("127.0.0.3", 9001), ("127.0.0.2", 9002)]


def test_with_a_wildcard_bind_local_addresses_on_our_port_are_us():
    peers = Peers(None, None, (("127.0.0.1", 8080), ("192.0.2.7", 8080), ("127.0.0.1", 8081)))
    finder = PeerFinder(peers, ("0.0.0.0", 8080))
    assert finder.others() == [("192.0.2.7", 8080), ("127.0.0.1", 8081)]


def test_a_dns_failure_is_logged_and_finds_no_peers(caplog):
    finder = PeerFinder(Peers("no-such-peer.invalid", 8080), ("127.0.0.1", 8080))
    with caplog.at_level(logging.WARNING, logger="gitsync.fleet"):
        assert finder.others() == []
    assert "cannot resolve no-such-peer.invalid" in caplog.text


# -- real peers over HTTP ----------------------------------------------------------------

class PeerStub:
    """A real HTTP server standing in for a replica: records peer calls, serves a status."""

    def __init__(self, status: dict | None = None, answer: int = 202):
        self.calls: list[tuple[dict, bytes]] = []
        self.release = threading.Event()
        self.hold = False
        self.status, self.answer = status or {"commit": "c1"}, answer
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.calls.append((dict(self.headers), body))
                if stub.hold:
                    stub.release.wait(10)
                self._send(stub.answer, b"{}")

            def do_GET(self):
                if stub.hold:
                    stub.release.wait(10)
                self._send(200, json.dumps(stub.status).encode())

            def _send(self, code, data):
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = ("127.0.0.1", self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stubs():
    made: list[PeerStub] = []

    def make(**kwargs) -> PeerStub:
        made.append(PeerStub(**kwargs))
        return made[-1]

    yield make
    for stub in made:
        stub.stop()


def closed_port() -> tuple[str, int]:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return ("127.0.0.1", sock.getsockname()[1])


def fleet_of(addresses, own=("127.0.0.1", 1)) -> Fleet:
    return Fleet(Peers(None, None, tuple(addresses)), SECRET, own)


def test_every_peer_gets_one_signed_notification(stubs):
    peers = [stubs() for _ in range(3)]
    fleet = fleet_of([p.address for p in peers])
    results = []
    fleet.add_listener(results.append)
    fleet.notify("abc123", "refs/heads/main", "delivery-1")
    wait_for(lambda: len(results) == 3, message="three notifications")
    for peer in peers:
        [(headers, body)] = peer.calls
        verify(SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], body)
        notice = json.loads(body)
        assert notice["commit"] == "abc123" and notice["delivery"] == "delivery-1"
        assert notice["ref"] == "refs/heads/main" and notice["origin"] == "127.0.0.1:1"
    assert results == ["sync"] * 3
    fleet.close()


def test_a_slow_peer_does_not_hold_up_the_others(stubs):
    slow = stubs()
    slow.hold = True
    fast = [stubs() for _ in range(2)]
    fleet = fleet_of([slow.address, closed_port(), *[p.address for p in fast]])
    results = []
    fleet.add_listener(results.append)
    fleet.notify("abc", "refs/heads/main", None)
    # The fast peers are answered while the slow one still holds its request.
    wait_for(lambda: all(p.calls for p in fast) and slow.calls, message="every peer called")
    wait_for(lambda: results.count("sync") == 2 and "unreachable" in results,
             message="the fast peers and the dead one counted")
    assert not slow.release.is_set()
    slow.release.set()
    fleet.close()


def test_a_peer_that_stops_answering_times_out(stubs):
    slow = stubs()
    slow.hold = True
    fleet = fleet_of([slow.address])
    results = []
    fleet.add_listener(results.append)
    fleet.notify("abc", "refs/heads/main", None)
    wait_for(lambda: results == ["unreachable"], timeout=10, message="the read timeout")
    fleet.close()


def test_refused_notifications_are_counted_by_result(stubs):
    refusing = stubs(answer=401)
    fleet = fleet_of([refusing.address])
    results = []
    fleet.add_listener(results.append)
    fleet.notify("abc", "refs/heads/main", None)
    wait_for(lambda: results == ["unauthorized"], message="the 401 counted")
    fleet.close()


def test_fleet_view_asks_every_replica(stubs):
    same = stubs(status={"commit": "c2", "last_error": None})
    other = stubs(status={"commit": "c1", "live_commit": "c1",
                          "rollout": {"commit": "c1", "state": "live"}})
    dead = closed_port()
    fleet = fleet_of([same.address, other.address, dead])
    view = fleet.view({"commit": "c2"})
    by_address = {r["address"]: r for r in view["replicas"]}
    assert len(view["replicas"]) == 4
    assert by_address["127.0.0.1:1"]["commit"] == "c2"
    assert by_address[f"127.0.0.1:{other.address[1]}"]["rollout"] == {"commit": "c1", "state": "live"}
    assert by_address[f"127.0.0.1:{dead[1]}"]["reachable"] is False
    assert by_address[f"127.0.0.1:{dead[1]}"]["last_error"]
    assert view["commits"] == {"c2": 2, "c1": 1}
    assert view["converged"] is False
    fleet.close()


def test_converged_counts_reachable_replicas_on_one_live_commit():
    def entry(commit, live=None, reachable=True):
        return {"address": "a", "reachable": reachable, "commit": commit, "live_commit": live}
    assert summarize([entry("c1"), entry("c1"), entry(None, reachable=False)])["converged"]
    assert not summarize([entry("c2", live="c1"), entry("c2")])["converged"]
    assert summarize([entry("c2", live="c2"), entry("c2")])["commits"] == {"c2": 2}
    assert not summarize([entry(None)])["converged"]
