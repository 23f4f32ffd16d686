"""gitsync benchmarks: speed and memory as ratios against plain git, run in the same script.

    .venv/bin/python bench/run.py                 # everything (make bench), < ~10 minutes
    .venv/bin/python bench/run.py --quick         # smaller counts and repos: a smoke run
    .venv/bin/python bench/run.py --only sync     # one part: sync, webhook, live, fleet, prepare, rollout, scale

Prints tables and writes <out>/results.json (default bench/out, git-ignored).
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PARTS = ("sync", "webhook", "live", "fleet", "prepare", "rollout", "scale")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts and repos: a smoke run")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run ({', '.join(PARTS)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="where results.json and the cached repositories go")
    parser.add_argument("--small-files", type=int, help="files in the small repo (50)")
    parser.add_argument("--large-files", type=int, help="files in the large repo (20000; quick 2000)")
    parser.add_argument("--iterations", type=int, help="pushes per repo and trigger (10; quick 3)")
    parser.add_argument("--clone-repeats", type=int, help="plain git clones per repo (3; quick 2)")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds to wait after gitsync's spare tree is ready, before the "
                             "next push (0.5)")
    parser.add_argument("--requests", type=int, help="webhook requests per run (2000; quick 200)")
    parser.add_argument("--rate", type=float, default=200.0, help="webhook requests per second (200)")
    parser.add_argument("--live-pushes", type=int, help="pushes per push->live mode and fleet size (20; quick 3)")
    parser.add_argument("--prepare-pushes", type=int,
                        help="pushes of each kind (same key, new key) for --prepare (10; quick 3)")
    parser.add_argument("--scale-files",
                        help="repo sizes for the scale part (50,20000,100000; quick 50,2000)")
    opts = parser.parse_args(argv)
    if opts.scale_files is None:
        opts.scale_files = "50,2000" if opts.quick else "50,20000,100000"
    opts.scale_files = [int(n) for n in str(opts.scale_files).split(",") if n.strip()]
    defaults = {"small_files": (50, 50), "large_files": (20000, 2000), "iterations": (10, 3),
                "clone_repeats": (3, 2), "requests": (2000, 200), "live_pushes": (20, 3),
                "prepare_pushes": (10, 3)}
    for name, (full, quick) in defaults.items():
        if getattr(opts, name) is None:
            setattr(opts, name, quick if opts.quick else full)
    opts.parts = [p.strip() for p in opts.only.split(",") if p.strip()]
    unknown = [p for p in opts.parts if p not in PARTS]
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return opts


def main(argv=None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    ctx = common.Context(opts.out, opts.quick)
    results: dict = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "quick": opts.quick, "machine": common.machine_info(ctx.env),
                     "settings": {k: v for k, v in vars(opts).items() if k not in ("out",)}}
    machine = results["machine"]
    print(f"machine: nproc={machine['nproc']}, {machine['git']}, python {machine['python']}, "
          f"kernel {machine['kernel']}, load average {machine['loadavg_start'][0]:.1f}"
          f"{' (quick run)' if opts.quick else ''}", flush=True)
    failed = False
    try:
        probe_api(ctx, opts)
        results["api_problem"] = ctx.api_problem
        for part in opts.parts:
            part_started = time.monotonic()
            print(f"\n== {part} ==", flush=True)
            try:
                module = __import__(f"bench_{part}")
                data, tables = module.run(ctx, opts)
            except Exception as err:   # one broken part must not hide the others' figures
                traceback.print_exc()
                data, tables = {"error": f"{type(err).__name__}: {err}"}, [f"{part}: FAILED ({err})"]
                failed = True
            data["seconds"] = round(time.monotonic() - part_started, 1)
            results[part] = data
            for text in tables:
                print("\n" + text, flush=True)
    finally:
        ctx.close()
    results["machine"]["loadavg_end"] = common.loadavg()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    path = opts.out / "results.json"
    temp = path.with_name(f".results.json.tmp-{os.getpid()}")
    temp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(temp, path)
    print(f"\ntotal {results['total_seconds']:.0f} s (load average at the end "
          f"{results['machine']['loadavg_end'][0]:.1f}); results in {path}")
    return 1 if failed else 0


def probe_api(ctx, opts) -> None:
    """Does this build serve the HTTP API with a webhook receiver? Parts skip what it lacks."""
    needs_api = any(p in opts.parts for p in PARTS)
    ctx.api_problem = None
    if not needs_api:
        return
    cached = common.ensure_repo(ctx, common.RepoSpec(opts.small_files))
    remote = common.Remote(ctx, cached, "probe")
    ctx.api_problem = common.api_available(ctx, remote.url)
    if ctx.api_problem:
        print(f"HTTP API not available, webhook measurements are skipped: {ctx.api_problem}",
              flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
