"""Issue 11: a bad push under steady load. A small stdlib app (it reads msg.txt per
request) under `gitsync-reload --listen --preload` with its status API, gitsync
following it with --app-status-url, and a load thread at 50 req/s through the app. The
sequence: good pushes (push -> live), a push with a SyntaxError (push -> rolled_back
in the sidecar's status), a fix (push -> live). Counts every request that failed."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import common
from common import BIN, Context

RATE = 50.0
WAIT = 60.0
TOKEN = "bench-rollout-token"
APP = (Path(__file__).resolve().parents[1] / "tests" / "test_rollout_e2e.py")


def app_source() -> str:
    """The e2e test's app: one definition of 'a small app that reads a file per request'."""
    text = APP.read_text()
    return text.split("APP = '''\\\n", 1)[1].split("'''", 1)[0]


def run(ctx: Context, opts) -> tuple[dict, list[str]]:
    data = common.guarded(sequence, ctx, opts)
    return data, report(data)


def sequence(ctx: Context, opts) -> dict:
    base = ctx.tempdir("rollout")
    source = app_source()
    remote, work = base / "app.git", base / "work"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    git("init", "--quiet", "--initial-branch=main", str(work))
    git("remote", "add", "origin", str(remote), cwd=work)
    first = commit(work, {"app.py": source, "msg.txt": "0"})
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)
    ports = {name: free_port() for name in ("api", "app", "reload")}
    (base / "token").write_text(TOKEN)
    api = f"http://127.0.0.1:{ports['api']}"
    procs = []
    try:
        procs.append(start(base, "gitsync", [
            str(BIN / "gitsync"), "--repo", remote.as_uri(), "--root", str(base / "root"), "--link", "app",
            "--period", "60s", "--http-bind", f"127.0.0.1:{ports['api']}", "--api-token-file",
            str(base / "token"), "--app-status-url", f"http://127.0.0.1:{ports['reload']}/api/v1/status",
            "--rollout-timeout", "30s"]))
        wait(lambda: (base / "root" / "app").exists(), "the first publish")
        procs.append(start(base, "app", [
            str(BIN / "gitsync-reload"), "--link", str(base / "root" / "app"), "--listen",
            f"127.0.0.1:{ports['app']}", "--preload", "http.server,socketserver",
            "--status-bind", f"127.0.0.1:{ports['reload']}", "--report-output", "--",
            sys.executable, "app.py"]))
        wait(lambda: status(api).get("live_commit") == first, "the first commit live")
        load = Load(f"http://127.0.0.1:{ports['app']}/")
        load.start()
        good = [push_until(api, work, {"msg.txt": str(n)}, "live") for n in range(1, opts.live_pushes + 1)]
        broken = push_until(api, work, {"app.py": source.replace("BaseHTTPRequestHandler):",
                                                                 "BaseHTTPRequestHandler:")}, "rolled_back")
        reason = (status(api).get("rollout") or {}).get("reason")
        fix = push_until(api, work, {"app.py": source, "msg.txt": "fixed"}, "live")
        load.stop()
        shown = status(api)
    finally:
        for proc in reversed(procs):   # each leads its own group: stop it all
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"rate_per_s": RATE, "requests": load.ok + len(load.failed), "failed_requests": len(load.failed),
            "failures": load.failed[:5], "push_to_live_p50_ms": round(statistics.median(good) * 1000),
            "push_to_live_max_ms": round(max(good) * 1000), "good_pushes": len(good),
            "broken_to_rolled_back_s": round(broken, 2), "fix_to_live_ms": round(fix * 1000),
            "reason": reason, "live_at_end": shown.get("live_commit")}


def push_until(api: str, work: Path, files: dict, state: str) -> float:
    """Seconds from the push to the sidecar's rollout of that commit reaching `state`."""
    sha = commit(work, files)
    started = time.monotonic()
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)
    post(f"{api}/api/v1/sync")
    wait(lambda: (s := status(api).get("rollout") or {}).get("commit") == sha and s["state"] == state,
         f"{sha[:7]} {state}", interval=0.005)
    return time.monotonic() - started


class Load(threading.Thread):
    """GETs at a steady rate; a request that is not a 200 is a failure."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.ok, self.failed, self.done = url, 0, [], threading.Event()

    def run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        next_at = time.monotonic()
        while not self.done.is_set():
            try:
                with opener.open(self.url, timeout=5) as response:
                    response.read()
                self.ok += 1
            except (OSError, urllib.error.HTTPError) as error:
                self.failed.append(repr(error))
            next_at += 1 / RATE
            self.done.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def report(data: dict) -> list[str]:
    if "error" in data:
        return [f"rollout: FAILED ({data['error']})"]
    rows = [("requests at 50/s through the sequence", data["requests"]),
            ("failed requests", data["failed_requests"]),
            (f"push -> live p50 ({data['good_pushes']} good pushes)", f"{data['push_to_live_p50_ms']} ms"),
            ("broken push -> rolled_back", f"{data['broken_to_rolled_back_s']} s"),
            ("fix -> live", f"{data['fix_to_live_ms']} ms"),
            ("reason kept", data["reason"])]
    return [common.table("bad push under load (--listen --preload, --app-status-url)",
                         ["measure", "value"], rows)]


# -- small helpers ------------------------------------------------------------------------

def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def commit(work: Path, files: dict) -> str:
    for name, text in files.items():
        (work / name).write_text(text)
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "--allow-empty", "-m", "bench", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(base: Path, name: str, argv: list[str]) -> subprocess.Popen:
    with open(base / f"{name}.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ})


def opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status(api: str) -> dict:
    try:
        with opener().open(f"{api}/api/v1/status", timeout=2) as response:
            return json.load(response)
    except (OSError, ValueError):
        return {}


def post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with opener().open(request, timeout=5) as response:
        response.read()


def wait(condition, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {WAIT:.0f}s waiting for {what}")
        time.sleep(interval)
