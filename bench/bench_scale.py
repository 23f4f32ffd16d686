"""Issue 18: one-file publish cost at 50, 20,000 and 100,000 files, next to plain git
(`git fetch --depth 1` + `git checkout` in a clone), in the same run; plus the first
sync of each repo (time, peak memory) against `git clone --depth 1`."""

from __future__ import annotations

import http.client
import os
import shutil
import time

import common
from common import Context, Gitsync, MemorySampler, Remote, RepoSpec

FIRST_PUBLISH_TIMEOUT = 900
FLIP_TIMEOUT = 60


def run(ctx: Context, opts) -> tuple[dict, list[str]]:
    results: dict = {"pushes": opts.iterations, "sizes": {}}
    for files in opts.scale_files:
        cached = common.ensure_repo(ctx, RepoSpec(files))
        remote = Remote(ctx, cached, f"scale-{files}")
        entry = {"files": files + 1,
                 "gitsync": common.guarded(measure_gitsync, ctx, remote, opts),
                 "plain_git": common.guarded(measure_plain_git, ctx, remote, opts)}
        results["sizes"][str(files)] = entry
    return results, report(results)


def measure_gitsync(ctx: Context, remote: Remote, opts) -> dict:
    """First publish (time, memory), then one-file pushes, each announced by a signed webhook,
    timed from `git push` returning to the link flip."""
    root = ctx.tempdir("scale-gitsync")
    secret = b"bench-receiver-secret"
    secret_file = root.parent / f"{root.name}.secret"
    secret_file.write_bytes(secret + b"\n")
    os.sync()
    started = time.monotonic()
    # The webhook is the only trigger (no 0-100 ms wait for the next poll in the figures).
    sync = Gitsync(ctx, remote.url, root / "sync", period="60s", api=True, secret_file=secret_file)
    host, port = sync.api.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        with MemorySampler(sync.proc.pid) as sampler:
            if sync.wait_published(FIRST_PUBLISH_TIMEOUT) is None:
                raise RuntimeError(f"gitsync published nothing ({common.failure_line(sync.proc.output)})")
        first = time.monotonic() - started
        flips = []
        for _ in range(opts.iterations):
            sync.wait_spare_ready()
            time.sleep(opts.settle)
            sha = remote.commit("scale")
            remote.push()
            pushed = time.monotonic()
            event = common.github_push(f"refs/heads/{common.BRANCH}", sha)
            status, _ = common.post_github(conn, secret, event)
            if status != 202:
                raise RuntimeError(f"webhook answered {status} to a push to the tracked branch")
            flipped = common.wait_for_link(sync.link, sha, FLIP_TIMEOUT)
            if flipped is None:
                raise RuntimeError(f"the link did not reach {sha[:12]} within {FLIP_TIMEOUT} s")
            flips.append(flipped - pushed)
    finally:
        conn.close()
        sync.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"first_sync_ms": round(first * 1000, 1), "first_sync_peak_total_kib": sampler.peak_total_kib,
            "push_to_flip": common.summary_ms(flips, 50, 95)}


def measure_plain_git(ctx: Context, remote: Remote, opts) -> dict:
    """`git clone --depth 1`, then per push: `git fetch --depth 1` + `git checkout` of it."""
    dest = ctx.tempdir("scale-clone") / "checkout"
    os.sync()
    clone_s, clone_peak = common.timed_max_rss(
        ["git", "clone", "--quiet", "--depth", "1", "--branch", common.BRANCH, "--", remote.url, str(dest)],
        ctx.env)
    updates = []
    try:
        for _ in range(opts.iterations):
            remote.commit("plain")
            remote.push()
            started = time.monotonic()
            ctx.git("fetch", "--quiet", "--depth", "1", "origin", common.BRANCH, cwd=dest)
            ctx.git("checkout", "--quiet", "--detach", "FETCH_HEAD", cwd=dest)
            updates.append(time.monotonic() - started)
    finally:
        shutil.rmtree(dest.parent, ignore_errors=True)
    return {"clone_ms": round(clone_s * 1000, 1), "clone_peak_rss_kib": clone_peak,
            "fetch_checkout": common.summary_ms(updates, 50, 95)}


def report(results: dict) -> list[str]:
    sizes = results["sizes"]
    smallest = sizes[min(sizes, key=int)] if sizes else {}

    def p50(entry, who, key):
        data = entry.get(who, {})
        return data.get(key, {}).get("p50_ms") if isinstance(data.get(key), dict) else None

    rows = []
    for entry in sizes.values():
        sync, plain = entry["gitsync"], entry["plain_git"]
        if "error" in sync or "error" in plain:
            why = sync.get("error") or plain.get("error")
            rows.append([f"{entry['files']:,}", "FAILED", why, "", "", "", "", ""])
            continue
        rows.append([f"{entry['files']:,}",
                     common.fmt(p50(entry, "gitsync", "push_to_flip"), " ms"),
                     common.fmt(common.ratio(p50(entry, "gitsync", "push_to_flip"),
                                             p50(smallest, "gitsync", "push_to_flip")), "x"),
                     common.fmt(p50(entry, "plain_git", "fetch_checkout"), " ms"),
                     common.fmt(common.ratio(p50(entry, "plain_git", "fetch_checkout"),
                                             p50(smallest, "plain_git", "fetch_checkout")), "x"),
                     common.fmt(sync["first_sync_ms"], " ms"), common.fmt(plain["clone_ms"], " ms"),
                     f"{_mib(sync['first_sync_peak_total_kib'])} / {_mib(plain['clone_peak_rss_kib'])}"])
    return [common.table(
        f"one-file publish (p50 of {results['pushes']}; gitsync: push -> signed webhook -> link flip; "
        "plain git: fetch --depth 1 + checkout in a clone)",
        ["files", "gitsync", "ratio", "plain git", "ratio", "first sync", "git clone --depth 1",
         "first sync peak / clone peak (MiB)"], rows)]


def _mib(kib):
    return common.fmt(kib / 1024, "") if kib else "-"
