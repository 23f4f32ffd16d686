"""Issue 3: how fast the inbound webhook answers at a steady 200 requests/s, and how a
valid push reaches the link through it while that load runs."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter

import common
from common import Context, Gitsync, Remote, RepoSpec

SECRET = b"bench-receiver-secret"
CONNECTIONS = 4          # keep-alive connections sharing the paced schedule
FLIP_TIMEOUT = 60


def run(ctx: Context, opts) -> tuple[dict, list[str]]:
    if ctx.api_problem:
        reason = f"not available: {ctx.api_problem}"
        return {"skipped": reason}, [f"webhook: skipped, HTTP API {reason}"]
    results = {"rate": opts.rate, "requests": opts.requests, "connections": CONNECTIONS,
               "other_ref": common.guarded(load_run, ctx, opts, RepoSpec(opts.small_files), pushes=False),
               "mixed": common.guarded(load_run, ctx, opts, RepoSpec(opts.large_files), pushes=True)}
    return results, report(results)


def load_run(ctx: Context, opts, spec: RepoSpec, pushes: bool) -> dict:
    remote = Remote(ctx, common.ensure_repo(ctx, spec), f"webhook-{spec.files}")
    root = ctx.tempdir("webhook")
    secret_file = root / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    sync = Gitsync(ctx, remote.url, root / "sync", period="60s", api=True, secret_file=secret_file)
    try:
        if sync.wait_published(300) is None:
            log = ctx.keep_log(sync.proc, "gitsync-webhook-first")
            raise RuntimeError(f"gitsync published nothing ({common.failure_line(sync.proc.output)}); "
                               f"log in {log}")
        sync.wait_spare_ready()
        time.sleep(opts.settle)
        host, port = sync.api.split("//")[1].split(":")
        stop = threading.Event()
        pusher = Pusher(ctx, remote, sync, host, int(port), opts.settle, stop) if pushes else None
        if pusher:
            pusher.thread.start()
        other = common.github_push("refs/heads/other", "1" * 40)
        samples = paced_load(host, int(port), other, opts.requests, opts.rate)
        stop.set()
        if pusher:
            pusher.thread.join(FLIP_TIMEOUT + 5)
    finally:
        sync.stop()
    data = summarize(samples, opts.rate)
    data["repo_files"] = spec.files + 1
    if pusher:
        data["tracked_pushes"] = pusher.summary()
    return data


def paced_load(host: str, port: int, body: bytes, count: int, rate: float) -> list[tuple]:
    """Open-loop: request i is due at start + i/rate. Latency is counted from when it was
    due, so a slow answer that delays the next request is not hidden (no coordinated
    omission); the time from actually sending is kept too."""
    samples: list[tuple] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        mine = []
        for index in range(offset, count, CONNECTIONS):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            try:
                status, _ = common.post_github(conn, SECRET, body)
            except (OSError, http.client.HTTPException) as err:
                status = type(err).__name__
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
            done = time.perf_counter()
            mine.append((status, done - due, done - sent, sent - due))
        conn.close()
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples.append(("_elapsed", time.perf_counter() - start))
    return samples


def summarize(samples: list[tuple], rate: float) -> dict:
    elapsed = [s[1] for s in samples if s[0] == "_elapsed"][0]
    requests = [s for s in samples if s[0] != "_elapsed"]
    statuses = Counter(str(s[0]) for s in requests)
    data = {"sent": len(requests), "achieved_rate": round(len(requests) / elapsed, 1),
            "statuses": dict(statuses),
            "latency": common.summary_ms([s[1] for s in requests], 50, 99),
            "service": common.summary_ms([s[2] for s in requests], 50, 99),
            "sent_late_over_5ms": sum(1 for s in requests if s[3] > 0.005)}
    return data


class Pusher:
    """While the load runs: commit, push, send the signed push event, wait for the link."""

    def __init__(self, ctx: Context, remote: Remote, sync: Gitsync, host: str, port: int,
                 settle: float, stop: threading.Event):
        self.ctx = ctx
        self.remote, self.sync, self.settle, self.stop = remote, sync, settle, stop
        self.host, self.port = host, port
        self.answers: list[float] = []
        self.flips: list[float] = []
        self.statuses: Counter = Counter()
        self.last_sha = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            time.sleep(0.5)
            while not self.stop.is_set():
                sha = self.remote.commit("mixed")
                self.remote.push()
                pushed = time.monotonic()
                status, _ = common.post_github(
                    conn, SECRET, common.github_push(f"refs/heads/{common.BRANCH}", sha))
                self.answers.append(time.monotonic() - pushed)
                self.statuses[str(status)] += 1
                flipped = common.wait_for_link(self.sync.link, sha, FLIP_TIMEOUT)
                if flipped is None:
                    log = self.ctx.keep_log(self.sync.proc, "gitsync-webhook-missed")
                    self.error = f"the link did not reach {sha[:12]} within {FLIP_TIMEOUT} s (log in {log})"
                    return
                self.flips.append(flipped - pushed)
                self.last_sha = sha
                self.sync.wait_spare_ready()
                self.stop.wait(self.settle)
        except (OSError, http.client.HTTPException, RuntimeError) as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            conn.close()

    def summary(self) -> dict:
        data = {"pushes": len(self.flips), "statuses": dict(self.statuses),
                "answer": common.summary_ms(self.answers, 50, 95),
                "push_to_flip": common.summary_ms(self.flips, 50, 95),
                "link_on_newest_push": self.last_sha is not None
                and common.link_sha(self.sync.link) == self.last_sha}
        if self.error:
            data["error"] = self.error
        return data


def report(results: dict) -> list[str]:
    rows, notes = [], []
    for label, title in (("other_ref", "push to another ref"),
                         ("mixed", "same + real pushes to the tracked branch")):
        data = results[label]
        if "error" in data:
            rows.append([title, "FAILED", "", "", "", "", ""])
            notes.append(f"{title} FAILED: {data['error']}")
            continue
        rows.append([f"{title} ({data['repo_files']:,} files)", data["sent"],
                     common.fmt(data["achieved_rate"], "/s"),
                     common.fmt(data["latency"]["p50_ms"], " ms"), common.fmt(data["latency"]["p99_ms"], " ms"),
                     common.fmt(data["service"]["p99_ms"], " ms"),
                     " ".join(f"{k}:{v}" for k, v in sorted(data["statuses"].items()))])
    tables = [common.table(
        f"webhook answer latency at {results['rate']:g} requests/s over {results['connections']} "
        "keep-alive connections (signed GitHub push events; counted from when each request was due)",
        ["load", "requests", "achieved", "p50", "p99", "p99 from send", "statuses"], rows), *notes]
    pushes = results["mixed"].get("tracked_pushes")
    if pushes:
        tables.append(common.table(
            "valid push -> published link through the webhook, during that load (gitsync --period 60s)",
            ["pushes", "answer p50", "push->link p50", "push->link p95", "statuses", "link on newest"],
            [[pushes["pushes"], common.fmt(pushes["answer"].get("p50_ms"), " ms"),
              common.fmt(pushes["push_to_flip"].get("p50_ms"), " ms"),
              common.fmt(pushes["push_to_flip"].get("p95_ms"), " ms"),
              " ".join(f"{k}:{v}" for k, v in sorted(pushes["statuses"].items())),
              "yes" if pushes["link_on_newest_push"] else "NO"]]))
        if pushes.get("error"):
            tables.append(f"tracked pushes stopped early: {pushes['error']}")
    return tables
