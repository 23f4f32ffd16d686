"""Issue 14: one push reaches every replica. N replicas (3 and 10) as real gitsync
processes on 127.0.0.2, 127.0.0.3, ... (own roots and ports, `--peers` the full
list, --period 60s so only the webhook and the peers' calls explain a sync), each
with gitsync-reload running a small app (stdlib http.server, handed its socket:
--listen, --preload: each start runs in an interpreter started ahead of the flip)
that answers with the commit it runs. A signed GitHub push goes to the
first replica only; the clock starts when `git push` returns.

Measured per push: push -> every replica published (its link names the commit),
push -> every replica live (its app answers with the commit), and the mixed-version
window: first replica live -> last replica live."""

from __future__ import annotations

import http.client
import time
import uuid
from pathlib import Path

import common
from bench_live import wait_reloader_settled, warm_starts
from common import BIN, Context

SECRET = b"bench-fleet-receiver-secret"
PEER_SECRET = "bench-fleet-peer-secret"
SIZES = (3, 10)
TIMEOUT = 60
GAP = 1.0   # seconds between pushes, after the fleet is live: housekeeping settles
RELOAD_ARGS = ("--debounce", "0", "--grace", "5s", "--preload", "http.server")

APP = '''\
"""A tiny app for the fleet benchmark: answers every GET with the commit it runs."""
import http.server, os, socket

COMMIT = os.environ.get("GITSYNC_HASH", "").encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(COMMIT)))
        self.end_headers()
        self.wfile.write(COMMIT)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)   # gitsync-reload --listen hands it over
notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", "\\0" + notify[1:] if notify.startswith("@") else notify)
server.serve_forever()
'''


def run(ctx: Context, opts) -> tuple[dict, list[str]]:
    if ctx.api_problem:
        return {"skipped": ctx.api_problem}, [f"fleet: skipped, {ctx.api_problem}"]
    results: dict = {"pushes": opts.live_pushes, "gap_s": GAP, "sizes": {}}
    remote = AppRemote(ctx)
    for size in SIZES:
        results["sizes"][str(size)] = common.guarded(measure, ctx, opts, remote, size)
    return results, report(results)


class AppRemote:
    """A bare repository holding app.py, and a clone that changes it and pushes."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        base = ctx.tempdir("fleet-remote")
        self.path, self.work = base / "app.git", base / "work"
        ctx.git("init", "--quiet", f"--initial-branch={common.BRANCH}", str(self.work))
        (self.work / "app.py").write_text(APP)
        (self.work / "message.txt").write_text("start\n")
        ctx.git("add", "--all", cwd=self.work)
        ctx.git("commit", "--quiet", "-m", "app", cwd=self.work)
        ctx.git("clone", "--quiet", "--bare", str(self.work), str(self.path))
        ctx.git("remote", "add", "origin", str(self.path), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit_and_push(self) -> tuple[str, float]:
        (self.work / "message.txt").write_text(f"push {uuid.uuid4().hex}\n")
        self.ctx.git("commit", "--quiet", "-am", "push", cwd=self.work)
        sha = self.ctx.git("rev-parse", "HEAD", cwd=self.work)
        self.ctx.git("push", "--quiet", "origin", f"HEAD:refs/heads/{common.BRANCH}", cwd=self.work)
        return sha, time.monotonic()


class Replica:
    def __init__(self, ctx: Context, remote: AppRemote, index: int, peers: list[tuple[str, int]],
                 secret_file: Path):
        self.host, self.port = peers[index]
        self.app_port = free_port(self.host)
        root = ctx.tempdir(f"fleet-replica-{index}")
        self.link = root / "repo"
        self.sync = ctx.start(
            [str(BIN / "gitsync"), "--repo", remote.url, "--root", str(root), "--link", "repo",
             "--ref", common.BRANCH, "--period", "60s", "--http-bind", f"{self.host}:{self.port}",
             "--receiver-secret-file", str(secret_file),
             "--peers", ",".join(f"{h}:{p}" for h, p in peers)],
            f"fleet-gitsync-{index}", env={"GITSYNC_PEER_SECRET": PEER_SECRET})
        self.reload = None

    def start_app(self, ctx: Context) -> None:
        self.reload = ctx.start(
            [str(BIN / "gitsync-reload"), "--link", str(self.link), *RELOAD_ARGS,
             "--listen", f"{self.host}:{self.app_port}", "--", str(BIN / "python"), "app.py"],
            f"fleet-reload-{self.port}")

    def live_commit(self) -> str | None:
        conn = http.client.HTTPConnection(self.host, self.app_port, timeout=2)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            response = conn.getresponse()
            return response.read().decode() if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def stop(self) -> None:
        for proc in (self.reload, self.sync):
            if proc is not None:
                proc.stop()


def free_port(host: str) -> int:
    import socket
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def measure(ctx: Context, opts, remote: AppRemote, size: int) -> dict:
    secret_file = ctx.tempdir("fleet-secret") / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    hosts = [f"127.0.0.{2 + i}" for i in range(size)]
    peers = [(host, free_port(host)) for host in hosts]
    replicas = [Replica(ctx, remote, i, peers, secret_file) for i in range(size)]
    try:
        first = wait_all(replicas, lambda r: common.link_sha(r.link), TIMEOUT)
        for replica in replicas:
            replica.start_app(ctx)
        sha = common.link_sha(replicas[0].link)
        if first is None or wait_all(replicas, lambda r: r.live_commit() == sha, TIMEOUT) is None:
            raise RuntimeError("the fleet did not come up: "
                               + common.failure_line(replicas[0].sync.output))
        settle(replicas, starts=1)
        conn = http.client.HTTPConnection(replicas[0].host, replicas[0].port, timeout=10)
        published, live, window = [], [], []
        for number in range(opts.live_pushes):
            sha, pushed = remote.commit_and_push()
            status, _ = common.post_github(conn, SECRET, common.github_push(
                f"refs/heads/{common.BRANCH}", sha))
            if status != 202:
                raise RuntimeError(f"the webhook answered {status}")
            seen = follow(replicas, sha, TIMEOUT)
            if seen is None:
                raise RuntimeError(f"not every replica went live on {sha[:12]}")
            published.append(max(seen["published"]) - pushed)
            live.append(max(seen["live"]) - pushed)
            window.append(max(seen["live"]) - min(seen["live"]))
            settle(replicas, starts=number + 2)
        conn.close()
        warm = sum(warm_starts(replica.reload) for replica in replicas)
    finally:
        for replica in replicas:
            replica.stop()
    return {"replicas": size, "all_published": common.summary_ms(published, 50, 99),
            "all_live": common.summary_ms(live, 50, 99),
            "window": common.summary_ms(window, 50, 99),
            "warm_starts": f"{warm}/{size * (opts.live_pushes + 1)}"}


def settle(replicas, starts: int) -> None:
    """As for any deploy a while after the last: each reloader's next spare interpreter
    is ready, and gitsync's housekeeping had GAP seconds."""
    for replica in replicas:
        wait_reloader_settled(replica.reload, "preload", starts)
    time.sleep(GAP)


def wait_all(replicas, check, timeout: float):
    deadline = time.monotonic() + timeout
    pending = list(replicas)
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if not check(r)]
        time.sleep(0.01)
    return None if pending else True


def follow(replicas, sha: str, timeout: float) -> dict | None:
    """When each replica's link named `sha`, and when its app first answered with it."""
    published: dict[int, float] = {}
    live: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(live) < len(replicas) and time.monotonic() < deadline:
        for index, replica in enumerate(replicas):
            if index not in published and common.link_sha(replica.link) == sha:
                published[index] = time.monotonic()
            if index not in live and replica.live_commit() == sha:
                live[index] = time.monotonic()
                published.setdefault(index, live[index])
        time.sleep(0.001)
    if len(live) < len(replicas):
        return None
    return {"published": list(published.values()), "live": list(live.values())}


def report(results: dict) -> list[str]:
    rows = []
    for size, data in results["sizes"].items():
        if "error" in data:
            rows.append([size, *["-"] * 7, f"FAILED: {data['error']}"])
            continue
        rows.append([size, data["all_live"]["n"],
                     common.fmt(data["all_published"]["p50_ms"], " ms"),
                     common.fmt(data["all_published"]["p99_ms"], " ms"),
                     common.fmt(data["all_live"]["p50_ms"], " ms"),
                     common.fmt(data["all_live"]["p99_ms"], " ms"),
                     common.fmt(data["window"]["p50_ms"], " ms"),
                     common.fmt(data["window"]["p99_ms"], " ms"), data["warm_starts"]])
    return [common.table(
        "fleet: one signed push to replica 1 of N (--peers, --period 60s); each replica runs a "
        "small app under gitsync-reload --listen " + " ".join(RELOAD_ARGS)
        + "; goals: 10 replicas all live p50 <= 500 ms, window p50 <= 250 ms",
        ["replicas", "n", "all published p50", "p99", "all live p50", "p99",
         "window (first->last live) p50", "p99", "warm starts"], rows)]
