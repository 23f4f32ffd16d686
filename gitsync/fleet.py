"""Peers: find the other replicas, tell them about a push, ask for their status.

A replica that accepts a forge push syncs and, in parallel, notifies every
peer (`POST /api/v1/peer/sync`, signed and timestamped). A notification is a
hint only: the peer asks the remote itself, and never passes it on. Peers are
found afresh on every call, so a headless Service's changing members are
always current; the replica's own address is skipped.

Every network call here runs in a small thread pool with short timeouts, so a
dead or slow peer (or a slow DNS answer) never delays the others, the HTTP
answer to the forge, or the local sync. No web framework: the API wraps this.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import Peers

log = logging.getLogger(__name__)

SYNC_PATH = "/api/v1/peer/sync"
STATUS_PATH = "/api/v1/status"
TIMESTAMP_HEADER = "X-Gitsync-Peer-Timestamp"
SIGNATURE_HEADER = "X-Gitsync-Peer-Signature"
MAX_CLOCK_SKEW = 60            # seconds a timestamp may be off, either way
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 1.0
POOL_SIZE = 16
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

Address = tuple[str, int]


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- signing ------------------------------------------------------------------------

def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def signed_headers(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, timestamp, body)}


class PeerRejected(Exception):
    """A peer call we refuse; `reason` is safe to send back (it quotes no header)."""

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


def verify(secret: bytes, timestamp: str | None, sent: str | None, body: bytes,
           now: float | None = None) -> None:
    """Raise PeerRejected unless the call is signed with `secret` and fresh."""
    if not timestamp or not sent:
        raise PeerRejected("unauthorized", f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    try:
        expected = signature(secret, timestamp, body)
    except UnicodeEncodeError:
        raise PeerRejected("unauthorized", f"{TIMESTAMP_HEADER} is not unix seconds") from None
    # Compared before the timestamp is read, in constant time, as bytes.
    if not hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode("ascii")):
        raise PeerRejected("unauthorized", "wrong signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise PeerRejected("unauthorized", f"{TIMESTAMP_HEADER} is not unix seconds") from None
    if abs((time.time() if now is None else now) - sent_at) > MAX_CLOCK_SKEW:
        raise PeerRejected("stale", f"the timestamp is more than {MAX_CLOCK_SKEW}s off")


class RecentIds:
    """Delivery ids seen lately, so a replayed call is ignored.

    A timestamp older than MAX_CLOCK_SKEW is refused anyway, so ids need only be
    kept a little longer than that; the count bound stops a flood of signed calls
    from growing the memory.
    """

    def __init__(self, size: int = 1000, keep_seconds: float = 3 * MAX_CLOCK_SKEW):
        self._size, self._keep = size, keep_seconds
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen_before(self, delivery_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._ids and next(iter(self._ids.values())) < now - self._keep:
                self._ids.popitem(last=False)
            if delivery_id in self._ids:
                return True
            self._ids[delivery_id] = now
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return False


class SyncLimiter:
    """At most `burst` syncs at once and `rate` per second after that, for valid calls.

    A call over the limit is not lost: one sync is scheduled for when the next
    slot frees, so the newest push still arrives early (and the poll remains).
    """

    def __init__(self, trigger: Callable[[], None], rate: float = 2.0, burst: int = 5):
        self._trigger, self._rate, self._burst = trigger, rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._pending: threading.Timer | None = None
        self._lock = threading.Lock()

    def request(self) -> str:
        """"started" (a sync now), "scheduled" (one later) or "already_scheduled"."""
        with self._lock:
            self._refill()
            if self._pending is not None:   # the scheduled sync will see this push too
                return "already_scheduled"
            if self._tokens >= 1:
                self._tokens -= 1
                started = True
            else:
                started = False
                self._pending = threading.Timer((1 - self._tokens) / self._rate, self._fire_pending)
                self._pending.daemon = True
                self._pending.start()
        if started:
            self._trigger()
            return "started"
        return "scheduled"

    def _fire_pending(self) -> None:
        with self._lock:
            self._pending = None
            self._refill()
            self._tokens = max(0.0, self._tokens - 1)
        self._trigger()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def cancel(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()


# -- finding peers ------------------------------------------------------------------

class PeerFinder:
    """Every replica's address, found afresh on each call, and which one is us."""

    def __init__(self, peers: Peers, own: Address, resolve=socket.getaddrinfo):
        self.peers, self.own, self._resolve = peers, own, resolve

    def replicas(self) -> list[Address]:
        """Every address named by --peers (us included if named); [] if DNS fails."""
        if self.peers.dns_name is None:
            return list(self.peers.addresses)
        try:
            infos = self._resolve(self.peers.dns_name, self.peers.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as err:
            log.warning("peers: cannot resolve %s: %s; notifying no peers this time",
                        self.peers.dns_name, err)
            return []
        port = self.peers.port or 0
        return sorted({(str(info[4][0]), port) for info in infos})

    def others(self) -> list[Address]:
        return [address for address in self.replicas() if not self.is_self(address)]

    def is_self(self, address: Address) -> bool:
        host, port = address
        own_host, own_port = self.own
        if port != own_port:
            return False
        if own_host not in WILDCARD_HOSTS:
            return _same_host(host, own_host)
        return _is_local(host)


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def _is_local(host: str) -> bool:
    """Whether `host` is an address of this machine: only those can be bound."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
        return True
    except OSError:
        return False


# -- talking to peers ---------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    status: int | None      # None: no answer (refused, timed out, reset)
    body: bytes = b""
    error: str | None = None


def http_call(address: Address, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> Reply:
    """One HTTP request with short connect and read timeouts; never raises."""
    host, port = address
    conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT)
    try:
        conn.connect()
        conn.sock.settimeout(READ_TIMEOUT)
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.read(64 * 1024))
    except (OSError, http.client.HTTPException) as err:
        return Reply(None, error=f"{type(err).__name__}: {err}".rstrip(": "))
    finally:
        conn.close()


SENT_RESULTS = {202: "sync", 200: "ignored", 401: "unauthorized"}


class Fleet:
    """Notify peers of a push and gather the fleet's status, all in parallel."""

    def __init__(self, peers: Peers, secret: bytes, own: Address,
                 resolve=socket.getaddrinfo, call: Callable[..., Reply] = http_call):
        self.finder = PeerFinder(peers, own, resolve)
        self._secret = secret
        self._call = call
        self._pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="peer")
        self._listeners: list[Callable[[str], None]] = []

    def verify(self, timestamp: str | None, sent: str | None, body: bytes) -> None:
        """Raise PeerRejected unless a peer call carries our secret's fresh signature."""
        verify(self._secret, timestamp, sent, body)

    @property
    def origin(self) -> str:
        """Who passed a push on, for the peers' logs: our address, or our host name
        (the pod's name) when we listen on every address."""
        host, port = self.finder.own
        return format_address((socket.gethostname() if host in WILDCARD_HOSTS else host, port))

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(result)` after each notification sent: sync, ignored, unauthorized,
        error (another status) or unreachable."""
        self._listeners.append(listener)

    def notify(self, commit: str | None, ref: str, delivery: str | None) -> None:
        """Pass a push on to every peer; returns at once (DNS included runs in the pool)."""
        body = json.dumps({"commit": commit, "ref": ref, "delivery": delivery or uuid.uuid4().hex,
                           "origin": self.origin}).encode()
        self._pool.submit(self._fan_out, body)

    def _fan_out(self, body: bytes) -> None:
        for address in self.finder.others():
            self._pool.submit(self._notify_one, address, body)

    def _notify_one(self, address: Address, body: bytes) -> None:
        reply = self._call(address, "POST", SYNC_PATH, body, signed_headers(self._secret, body))
        result = "unreachable" if reply.status is None else SENT_RESULTS.get(reply.status, "error")
        level = logging.DEBUG if result in ("sync", "ignored") else logging.WARNING
        log.log(level, "peer %s: notification %s (%s)", format_address(address), result,
                reply.error or reply.status)
        for listener in self._listeners:
            listener(result)

    def view(self, own_status: dict) -> dict:
        """Every replica's commits (ours from `own_status`), asked in parallel."""
        own_label = format_address(self.finder.own)
        others = []
        for address in self.finder.replicas():
            if self.finder.is_self(address):
                own_label = format_address(address)
            else:
                others.append(address)
        asked = list(self._pool.map(self._ask_status, others))
        replicas = [replica_entry(own_label, own_status, None)] + asked
        return summarize(replicas)

    def _ask_status(self, address: Address) -> dict:
        reply = self._call(address, "GET", STATUS_PATH, None, {"Accept": "application/json"})
        if reply.status != 200:
            return replica_entry(format_address(address), None,
                                 reply.error or f"HTTP {reply.status}")
        try:
            status = json.loads(reply.body)
        except ValueError:
            return replica_entry(format_address(address), None, "the status is not JSON")
        return replica_entry(format_address(address), status, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def replica_entry(address: str, status: dict | None, unreachable: str | None) -> dict:
    if status is None:
        return {"address": address, "reachable": False, "commit": None, "live_commit": None,
                "rollout": None, "last_error": unreachable}
    return {"address": address, "reachable": True, "commit": status.get("commit"),
            "live_commit": status.get("live_commit"), "rollout": status.get("rollout"),
            "last_error": status.get("last_error")}


def serving_commit(replica: dict) -> str | None:
    """The commit a replica's app runs: its live commit where rollouts report one,
    else its published commit."""
    return replica.get("live_commit") or replica.get("commit")


def summarize(replicas: list[dict]) -> dict:
    reachable = [replica for replica in replicas if replica["reachable"]]
    commits: dict[str, int] = {}
    for replica in reachable:
        commit = serving_commit(replica)
        if commit:
            commits[commit] = commits.get(commit, 0) + 1
    converged = bool(reachable) and len(commits) == 1 and all(map(serving_commit, reachable))
    return {"replicas": replicas, "converged": converged, "commits": commits}
