"""Issue 4: push -> the demo app answering with the new commit, under gitsync-reload;
and the reloader alone: a symlink flip -> the new body. Each in three modes: `restart`
(the app binds its port; stop the old app, then start the new one), `handoff`
(gitsync-reload --listen holds the port and hands it to each app as fd 3; the new app
starts beside the old one, which stops once the new one says READY=1) and `preload`
(handoff, plus --preload flask,waitress: each start runs in an interpreter that
imported them ahead of the flip). A steady request load runs through every
measurement and counts the requests that failed."""

from __future__ import annotations

import collections
import http.client
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import common
from common import BIN, PROJECT, Context, Gitsync

SECRET = b"bench-receiver-secret"
APP_DIR = "demo-app"
RELOAD_ARGS = ("--signal", "INT", "--grace", "5s")   # waitress drains on SIGINT (FINDINGS)
MODES = ("restart", "handoff", "preload")
PRELOAD = "flask,waitress"  # what the demo app imports from its environment
LIVE_TIMEOUT = 60
FLIPS = 10
LOAD_RATE = 50            # requests per second from the steady client, on fresh connections
LOAD_TIMEOUT = 2.0        # a request not answered by then counts as failed
LOAD_LIMIT_S = 600        # the steady client stops by itself after this long, whatever happens


def run(ctx: Context, opts) -> tuple[dict, list[str]]:
    missing = [p for p in (PROJECT / APP_DIR / "app.py", BIN / "gitsync-reload") if not p.exists()]
    if missing:
        reason = "not available: " + ", ".join(str(p.relative_to(PROJECT.parent)) for p in missing)
        return {"skipped": reason}, [f"live: skipped, {reason}"]
    results: dict = {"pushes": opts.live_pushes, "settle_s": opts.settle, "load_rate": LOAD_RATE,
                     "reload_args": {mode: " ".join(reload_args(mode, "<port>")) for mode in MODES},
                     "modes": {mode: {} for mode in MODES}}
    remote = DemoRemote(ctx)
    # Each measurement in both modes back to back, so a machine that slows down meanwhile
    # (a shared 2-core box) weighs on both alike.
    for mode in MODES:
        if ctx.api_problem:
            results["modes"][mode]["webhook"] = {"skipped": f"HTTP API not available: {ctx.api_problem}"}
        else:
            results["modes"][mode]["webhook"] = common.guarded(push_to_live, ctx, opts, remote, "webhook", mode)
    for mode in MODES:
        results["modes"][mode]["poll_1s"] = common.guarded(push_to_live, ctx, opts, remote, "poll", mode)
    for mode in MODES:
        results["modes"][mode]["reloader_flip"] = common.guarded(reloader_alone, ctx, opts, mode)
    return results, report(results)


class DemoRemote:
    """A bare repository holding the demo app as the project has it, and a clone that
    changes message.txt and pushes."""

    def __init__(self, ctx: Context, name: str = "demo-remote", files: dict[str, str] | None = None):
        self.ctx = ctx
        base = ctx.tempdir(name)
        self.path, self.work = base / "demo.git", base / "work"
        ctx.git("init", "--quiet", f"--initial-branch={common.BRANCH}", str(self.work))
        copy_app(self.work)
        for path, text in {"message.txt": "benchmark start\n", **(files or {})}.items():
            (self.work / path).write_text(text)
        ctx.git("add", "--all", cwd=self.work)
        ctx.git("commit", "--quiet", "-m", "demo app", cwd=self.work)
        ctx.git("clone", "--quiet", "--bare", str(self.work), str(self.path))
        ctx.git("remote", "add", "origin", str(self.path), cwd=self.work)
        self.counter = 0

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit_and_push(self, files: dict[str, str] | None = None) -> tuple[str, float]:
        """(new sha, monotonic time `git push` returned); `files` changes more than message.txt."""
        self.counter += 1
        (self.work / "message.txt").write_text(f"benchmark push {self.counter} {uuid.uuid4().hex}\n")
        for path, text in (files or {}).items():
            (self.work / path).write_text(text)
        self.ctx.git("commit", "--quiet", "-am", f"push {self.counter}", cwd=self.work)
        sha = self.ctx.git("rev-parse", "HEAD", cwd=self.work)
        self.ctx.git("push", "--quiet", "origin", f"HEAD:refs/heads/{common.BRANCH}", cwd=self.work)
        return sha, time.monotonic()


def copy_app(dest: Path) -> None:
    shutil.copytree(PROJECT / APP_DIR, dest / APP_DIR,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "node_modules"))


def get_commit(port: int) -> str | None:
    """One GET /version on a fresh connection; None while nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/version", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return json.loads(body).get("commit")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def wait_for_body(port: int, sha: str, timeout: float, link: Path | None = None) -> dict | None:
    """Poll /version every ~5 ms until it shows `sha`. Returns when that happened, when
    `link` (if given) was first seen naming `sha`, and how long the app did not answer."""
    deadline = time.monotonic() + timeout
    failed, first_failure, flipped = 0, None, None
    while time.monotonic() < deadline:
        if link is not None and flipped is None and common.link_sha(link) == sha:
            flipped = time.monotonic()
        commit = get_commit(port)
        now = time.monotonic()
        if commit == sha:
            return {"at": now, "flipped": flipped if flipped is not None else now, "failed": failed,
                    "unavailable": now - first_failure if first_failure is not None else 0.0}
        if commit is None:
            failed += 1
            first_failure = first_failure or now
        time.sleep(0.005)
    return None


class SteadyLoad:
    """GET /version at LOAD_RATE on fresh connections, from a thread, while a measurement
    runs: how many requests failed (refused, reset, timed out, not 200) and how long the
    answered ones took. Bounded: it stops when the measurement ends, or after LOAD_LIMIT_S."""

    def __init__(self, port: int):
        self.port = port
        self.halt = threading.Event()
        self.outcomes: collections.Counter = collections.Counter()
        self.latencies: list[float] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "SteadyLoad":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.thread.join(timeout=LOAD_TIMEOUT + 5)

    def run(self) -> None:
        interval, deadline = 1 / LOAD_RATE, time.monotonic() + LOAD_LIMIT_S
        due = time.monotonic()
        while not self.halt.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            outcome = self.request()
            self.outcomes[outcome] += 1
            if outcome == "ok":
                self.latencies.append(time.monotonic() - started)
            due = max(due + interval, time.monotonic() - interval)  # late: go on, do not burst
            self.halt.wait(max(0.0, due - time.monotonic()))

    def request(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=LOAD_TIMEOUT)
        try:
            conn.request("GET", "/version", headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            return "ok" if response.status == 200 else f"HTTP {response.status}"
        except ConnectionRefusedError:
            return "refused"
        except (OSError, http.client.HTTPException) as error:
            return type(error).__name__
        finally:
            conn.close()

    def summary(self) -> dict:
        total = sum(self.outcomes.values())
        return {"rate": LOAD_RATE, "requests": total, "failed": total - self.outcomes["ok"],
                "refused": self.outcomes["refused"], "outcomes": dict(self.outcomes),
                "latency": common.summary_ms(self.latencies, 50, 99)}


def reload_args(mode: str, port: int | str) -> tuple[str, ...]:
    if mode == "handoff":
        return (*RELOAD_ARGS, "--listen", f"127.0.0.1:{port}")
    if mode == "preload":
        return (*RELOAD_ARGS, "--listen", f"127.0.0.1:{port}", "--preload", PRELOAD)
    return RELOAD_ARGS


def wait_reloader_settled(reloader, mode: str, starts: int, timeout: float = 30) -> None:
    """With --preload, a deploy minutes after the last one finds a warm interpreter; so
    does the next push here: wait until gitsync-reload says the spare after `starts`
    starts is ready (it is made a moment after each start)."""
    if mode != "preload":
        return
    deadline = time.monotonic() + timeout
    while reloader.output.count("spare interpreter pid") < starts + 1:
        if time.monotonic() > deadline or not reloader.alive():
            raise RuntimeError(f"no warm spare interpreter after {starts} starts: "
                               f"{common.failure_line(reloader.output)}")
        time.sleep(0.02)


def warm_starts(reloader) -> int:
    return reloader.output.count(", warm): ")


def start_reloader(ctx: Context, link: Path, port: int, mode: str):
    return ctx.start([str(BIN / "gitsync-reload"), "--link", str(link), *reload_args(mode, port), "--",
                      str(BIN / "python"), f"{APP_DIR}/app.py"],
                     f"reload-{mode}", env={"PORT": str(port), "HOST": "127.0.0.1"})


def push_to_live(ctx: Context, opts, remote: DemoRemote, trigger: str, mode: str) -> dict:
    root = ctx.tempdir(f"live-{trigger}-{mode}")
    port = common.free_port()
    if trigger == "webhook":
        secret_file = root / "secret"
        secret_file.write_bytes(SECRET + b"\n")
        sync = Gitsync(ctx, remote.url, root / "sync", period="60s", api=True, secret_file=secret_file)
    else:
        sync = Gitsync(ctx, remote.url, root / "sync", period="1s", api=ctx.api_problem is None)
    reloader = None
    conn = None
    try:
        first = sync.wait_published(60)
        if first is None:
            raise RuntimeError(f"gitsync published nothing: {common.failure_line(sync.proc.output)}")
        reloader = start_reloader(ctx, sync.link, port, mode)
        if wait_for_body(port, first, LIVE_TIMEOUT) is None:
            raise RuntimeError(f"the demo app never answered with {first[:12]}: "
                               f"{common.failure_line(reloader.output)}")
        if sync.api:
            host, api_port = sync.api.split("//")[1].split(":")
            conn = http.client.HTTPConnection(host, int(api_port), timeout=10)
        wait_reloader_settled(reloader, mode, starts=1)
        time.sleep(opts.settle)
        lives, flips, to_body, down = [], [], [], []
        with SteadyLoad(port) as load:
            for number in range(opts.live_pushes):
                sha, pushed = remote.commit_and_push()
                if trigger == "webhook":
                    status, _ = common.post_github(conn, SECRET,
                                                   common.github_push(f"refs/heads/{common.BRANCH}", sha))
                    if status != 202:
                        raise RuntimeError(f"webhook answered {status} to a push to the tracked branch")
                seen = wait_for_body(port, sha, LIVE_TIMEOUT, link=sync.link)
                if seen is None:
                    raise RuntimeError(f"the app never showed {sha[:12]}: {common.failure_line(reloader.output)}")
                lives.append(seen["at"] - pushed)
                flips.append(max(0.0, seen["flipped"] - pushed))
                to_body.append(seen["at"] - seen["flipped"])
                down.append(seen["unavailable"])
                sync.wait_spare_ready()
                wait_reloader_settled(reloader, mode, starts=number + 2)
                time.sleep(opts.settle)
            warm = warm_starts(reloader)
    finally:
        if conn is not None:
            conn.close()
        if reloader is not None:
            reloader.stop(grace=8)
        sync.stop()
    return {"push_to_live": common.summary_ms(lives, 50, 95),
            "push_to_flip": common.summary_ms(flips, 50, 95),
            "flip_to_body": common.summary_ms(to_body, 50, 95),
            "unavailable": common.summary_ms(down, 50, 95),
            "warm_starts": warm, "load": load.summary()}


def reloader_alone(ctx: Context, opts, mode: str) -> dict:
    """Two prepared trees; flip the link between them ourselves, time the new body."""
    root = ctx.tempdir("flip")
    worktrees = root / ".worktrees"
    shas = [uuid.uuid4().hex + uuid.uuid4().hex[:8] for _ in range(2)]
    for sha in shas:
        tree = worktrees / sha
        copy_app(tree)
        (tree / "message.txt").write_text(f"tree {sha}\n")
    link = root / "app"
    point(link, worktrees / shas[0])
    port = common.free_port()
    reloader = start_reloader(ctx, link, port, mode)
    times, down = [], []
    try:
        if wait_for_body(port, shas[0], LIVE_TIMEOUT) is None:
            raise RuntimeError(f"the demo app never answered: {common.failure_line(reloader.output)}")
        wait_reloader_settled(reloader, mode, starts=1)
        time.sleep(0.5)
        with SteadyLoad(port) as load:
            for number in range(FLIPS if not ctx.quick else 3):
                target = shas[(number + 1) % 2]
                point(link, worktrees / target)
                flipped = time.monotonic()
                seen = wait_for_body(port, target, LIVE_TIMEOUT)
                if seen is None:
                    raise RuntimeError(f"no new body after a flip: {common.failure_line(reloader.output)}")
                times.append(seen["at"] - flipped)
                down.append(seen["unavailable"])
                wait_reloader_settled(reloader, mode, starts=number + 2)
                time.sleep(0.5)
            warm = warm_starts(reloader)
    finally:
        reloader.stop(grace=8)
    return {"flip_to_body": common.summary_ms(times, 50, 95),
            "unavailable": common.summary_ms(down, 50, 95),
            "warm_starts": warm, "load": load.summary()}


def point(link: Path, tree: Path) -> None:
    """Swap the link atomically, as gitsync does: a new relative link renamed over the old."""
    temp = link.with_name(f".{link.name}.tmp-{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.relpath(tree, link.parent), temp)
    os.replace(temp, link)


def report(results: dict) -> list[str]:
    rows, notes = [], []
    for mode in MODES:
        for key, title in (("webhook", "push -> live, webhook (--period 60s)"),
                           ("poll_1s", "push -> live, poll (--period 1s)"),
                           ("reloader_flip", "reloader alone: flip -> new body")):
            data = results["modes"][mode][key]
            if "skipped" in data or "error" in data:
                rows.append([mode, title, *["-"] * 9, "skipped" if "skipped" in data else "FAILED"])
                notes.append(f"{mode}, {title}: {data.get('skipped') or data.get('error')}")
                continue
            total = data.get("push_to_live") or data["flip_to_body"]
            flip, load = data.get("push_to_flip", {}), data["load"]
            rows.append([mode, title, total["n"], common.fmt(total["p50_ms"], " ms"),
                         common.fmt(total["p95_ms"], " ms"), common.fmt(flip.get("p50_ms"), " ms"),
                         common.fmt(data["flip_to_body"]["p50_ms"], " ms"),
                         common.fmt(data["unavailable"]["p50_ms"], " ms"),
                         f"{load['failed']}/{load['requests']}", common.fmt(load["latency"].get("p99_ms"), " ms"),
                         f"{data.get('warm_starts', 0)}/{total['n'] + 1}", ""])
    return [common.table(
        "demo app under gitsync-reload " + " ".join(RELOAD_ARGS) + " (handoff: + --listen;"
        f" preload: + --listen --preload {PRELOAD}, next push once the spare interpreter is ready too)"
        f"; GET /version every ~5 ms on fresh connections; next push once the spare tree is ready"
        f" + {results['settle_s']:g} s; meanwhile a steady {LOAD_RATE} req/s load",
        ["mode", "path", "n", "p50", "p95", "push->flip p50", "flip->body p50", "not answering p50",
         "load failed/sent", "load p99", "warm starts", ""], rows),
        *notes]
