"""Issue 2: one-file push -> link flip, small repo vs large repo, next to plain git clone."""

from __future__ import annotations

import http.client
import os
import shutil
import time

import common
from common import Context, Gitsync, MemorySampler, Remote, RepoSpec

FIRST_PUBLISH_TIMEOUT = 300
FLIP_TIMEOUT = 60        # a missed trigger in webhook mode is then caught by the 60 s poll
MAX_MISSED = 2


def run(ctx: Context, opts) -> tuple[dict, list[str]]:
    sizes = {"small": RepoSpec(opts.small_files), "large": RepoSpec(opts.large_files)}
    results: dict = {"iterations": opts.iterations, "settle_s": opts.settle,
                     "poll_period": "100ms", "sizes": {}}
    for label, spec in sizes.items():
        cached = common.ensure_repo(ctx, spec)
        entry: dict = {"files": spec.files + 1, "bytes_approx": spec.files * spec.file_size}
        remote = Remote(ctx, cached, f"sync-{label}")
        entry["poll"] = common.guarded(measure_gitsync, ctx, remote, opts, mode="poll")
        if ctx.api_problem is None:
            entry["webhook"] = common.guarded(measure_gitsync, ctx, remote, opts, mode="webhook")
        else:
            entry["webhook"] = {"skipped": f"HTTP API not available: {ctx.api_problem}"}
        entry["git_clone"] = measure_clone(ctx, remote, opts.clone_repeats)
        results["sizes"][label] = entry
    results["ratios"] = ratios(results["sizes"])
    return results, report(results)


def measure_gitsync(ctx: Context, remote: Remote, opts, mode: str) -> dict:
    """Start gitsync, time the first publish, then `iterations` one-file pushes."""
    root = ctx.tempdir(f"gitsync-{mode}")
    secret = b"bench-receiver-secret"
    if mode == "webhook":
        secret_file = root.parent / f"{root.name}.secret"
        secret_file.write_bytes(secret + b"\n")
        extra = {"period": "60s", "api": True, "secret_file": secret_file}
    else:
        extra = {"period": "100ms", "api": ctx.api_problem is None}
    os.sync()
    started = time.monotonic()
    sync = Gitsync(ctx, remote.url, root / "sync", **extra)
    conn = None
    try:
        with MemorySampler(sync.proc.pid) as sampler:
            first = sync.wait_published(FIRST_PUBLISH_TIMEOUT)
        first_publish = time.monotonic() - started
        if first is None:
            log = ctx.keep_log(sync.proc, f"gitsync-{mode}-first")
            raise RuntimeError(f"gitsync published nothing ({common.failure_line(sync.proc.output)}); "
                               f"log in {log}")
        memory = {"first_publish_peak_total_kib": sampler.peak_total_kib,
                  "first_publish_peak_git_child_kib": sampler.peak_child_kib,
                  "vmhwm_kib": common.proc_status_kib(sync.proc.pid, "VmHWM")}
        sync.wait_spare_ready()
        time.sleep(1.0)          # let start-up work settle before the idle reading
        memory["idle_rss_kib"] = common.proc_status_kib(sync.proc.pid, "VmRSS")
        memory["idle_children"] = len(common.descendants(sync.proc.pid))
        if mode == "webhook":
            host, port = sync.api.split("//")[1].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        latencies, pushes, answers, housekeeping, spare_ready, missed = [], [], [], [], 0, []
        for _ in range(opts.iterations):
            spare_ready += sync.spare_ready()
            sha = remote.commit(mode)
            push_start = time.monotonic()
            remote.push()
            pushed = time.monotonic()
            if conn is not None:
                status, _ = common.post_github(conn, secret, common.github_push(f"refs/heads/{common.BRANCH}", sha))
                answers.append(time.monotonic() - pushed)
                if status != 202:
                    raise RuntimeError(f"webhook answered {status} to a push to the tracked branch")
            flipped = common.wait_for_link(sync.link, sha, FLIP_TIMEOUT)
            if flipped is None:
                missed.append(sha)
                log = ctx.keep_log(sync.proc, f"gitsync-{mode}-missed")
                print(f"  {mode}: the link did not reach {sha[:12]} within {FLIP_TIMEOUT} s "
                      f"(gitsync log kept in {log})", flush=True)
                if len(missed) >= MAX_MISSED:
                    raise RuntimeError(f"the link missed {len(missed)} pushes; gitsync log in {log}")
                continue
            latencies.append(max(0.0, flipped - pushed))
            pushes.append(pushed - push_start)
            # The next tree is built from a hard-linked spare made after each publish;
            # let it be ready, as it would be for pushes seconds apart.
            waited = sync.wait_spare_ready()
            if waited is not None:
                housekeeping.append(time.monotonic() - flipped)
            time.sleep(opts.settle)
    finally:
        if conn is not None:
            conn.close()
        sync.stop()
        shutil.rmtree(root, ignore_errors=True)
    result = {"first_publish_ms": round(first_publish * 1000, 1),
              "push_to_flip": common.summary_ms(latencies, 50, 95),
              "git_push": common.summary_ms(pushes, 50),
              "spare_ready_at_push": f"{spare_ready}/{opts.iterations}",
              "flip_to_spare_ready": common.summary_ms(housekeeping, 50, 95),
              "missed_flips": len(missed),
              "memory": memory}
    if answers:
        result["webhook_answer"] = common.summary_ms(answers, 50, 95)
    return result


def measure_clone(ctx: Context, remote: Remote, repeats: int) -> dict:
    """Plain `git clone --depth 1 file://...` (with its checkout), the same repo, same run."""
    times, peaks = [], []
    for _ in range(repeats):
        dest = ctx.tempdir("clone") / "checkout"
        os.sync()      # start from a clean disk: no writeback of earlier trees in the timing
        elapsed, peak = common.timed_max_rss(
            ["git", "clone", "--quiet", "--depth", "1", "--branch", common.BRANCH, "--", remote.url, str(dest)],
            ctx.env)
        times.append(elapsed)
        if peak is not None:
            peaks.append(peak)
        shutil.rmtree(dest.parent, ignore_errors=True)
    data = common.summary_ms(times, 50)
    data["peak_rss_kib"] = max(peaks) if peaks else None
    return data


def ratios(sizes: dict) -> dict:
    small, large = sizes["small"], sizes["large"]

    def p50(entry, *keys):
        for key in keys:
            entry = entry.get(key, {}) if isinstance(entry, dict) else {}
        return entry.get("p50_ms") if isinstance(entry, dict) else None

    return {
        "gitsync_poll_large_over_small": common.ratio(p50(large, "poll", "push_to_flip"),
                                                      p50(small, "poll", "push_to_flip")),
        "gitsync_webhook_large_over_small": common.ratio(p50(large, "webhook", "push_to_flip"),
                                                         p50(small, "webhook", "push_to_flip")),
        "git_clone_large_over_small": common.ratio(p50(large, "git_clone"), p50(small, "git_clone")),
        "git_clone_large_over_gitsync_poll_large": common.ratio(p50(large, "git_clone"),
                                                                p50(large, "poll", "push_to_flip")),
        # With a small baseline of tens of ms, the ratio swings; the added time is steadier.
        "gitsync_poll_large_minus_small_ms": _minus(p50(large, "poll", "push_to_flip"),
                                                    p50(small, "poll", "push_to_flip")),
        "gitsync_webhook_large_minus_small_ms": _minus(p50(large, "webhook", "push_to_flip"),
                                                       p50(small, "webhook", "push_to_flip")),
    }


def _minus(a, b):
    return round(a - b, 1) if a is not None and b is not None else None


def report(results: dict) -> list[str]:
    rows, notes = [], []
    for label, entry in results["sizes"].items():
        clone = entry["git_clone"]
        for mode in ("poll", "webhook"):
            data = entry[mode]
            if "skipped" in data or "error" in data:
                word = "skipped" if "skipped" in data else "FAILED"
                rows.append([f"{label} ({entry['files']:,} files)", mode, word, "", "", "", "", ""])
                where = mode if "skipped" in data else f"{label} {mode}"
                note = f"{where} {word}: {data.get('skipped') or data.get('error')}"
                if note not in notes:
                    notes.append(note)
                continue
            if data["missed_flips"]:
                notes.append(f"{label} {mode}: {data['missed_flips']} push(es) did not reach the link "
                             f"within {FLIP_TIMEOUT} s and are left out of p50/p95")
            flip = data["push_to_flip"]
            rows.append([f"{label} ({entry['files']:,} files)", mode,
                         common.fmt(flip["p50_ms"], " ms"), common.fmt(flip["p95_ms"], " ms"),
                         common.fmt(data["first_publish_ms"], " ms"),
                         common.fmt(data["flip_to_spare_ready"]["p50_ms"], " ms"), data["spare_ready_at_push"],
                         common.fmt(clone["p50_ms"], " ms")])
    tables = [common.table(
        f"push -> link flip (one-file change, {results['iterations']} pushes, "
        f"each after the previous publish's spare tree was ready + {results['settle_s']:g} s; poll period 100ms)",
        ["repo", "trigger", "p50", "p95", "first publish", "flip->spare ready p50", "spare ready at push",
         "git clone --depth 1 p50"],
        rows)]
    tables += notes
    r = results["ratios"]
    tables.append(common.table("ratios of medians (issue target for gitsync large/small: <= ~2x)",
                               ["what", "ratio", "large - small"],
                               [["gitsync push->flip, poll", common.fmt(r["gitsync_poll_large_over_small"], "x"),
                                 common.fmt(r["gitsync_poll_large_minus_small_ms"], " ms")],
                                ["gitsync push->flip, webhook", common.fmt(r["gitsync_webhook_large_over_small"], "x"),
                                 common.fmt(r["gitsync_webhook_large_minus_small_ms"], " ms")],
                                ["plain git clone --depth 1", common.fmt(r["git_clone_large_over_small"], "x"), ""],
                                ["large repo: git clone / gitsync push->flip (poll)",
                                 common.fmt(r["git_clone_large_over_gitsync_poll_large"], "x"), ""]]))
    mem_rows = []
    for label, entry in results["sizes"].items():
        memory = entry["poll"].get("memory", {})
        mem_rows.append([f"{label} ({entry['files']:,} files)", _mib(memory.get("idle_rss_kib")),
                         _mib(memory.get("vmhwm_kib")),
                         _mib(memory.get("first_publish_peak_git_child_kib")),
                         _mib(memory.get("first_publish_peak_total_kib")),
                         _mib(entry["git_clone"].get("peak_rss_kib"))])
    tables.append(common.table(
        "memory (MiB): gitsync idle RSS / its own peak (VmHWM) / largest git child and whole "
        "process tree during the first publish (sampled every 10 ms) / git clone peak (time -v)",
        ["repo", "gitsync idle", "gitsync VmHWM", "git child peak", "tree peak", "git clone peak"],
        mem_rows))
    return tables


def _mib(kib):
    return common.fmt(kib / 1024, "") if kib else "-"
