"""The benchmark code runs end to end on tiny repositories (no timing thresholds here:
speed and memory are measured by `make bench` only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_quick_sync_benchmark_writes_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--quick", "--only", "sync",
         "--small-files", "10", "--large-files", "100", "--iterations", "2",
         "--clone-repeats", "1", "--settle", "0.3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "push -> link flip" in proc.stdout

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["nproc"] >= 1
    sync = results["sync"]
    assert set(sync["sizes"]) == {"small", "large"}
    for entry in sync["sizes"].values():
        poll = entry["poll"]
        assert poll["push_to_flip"]["n"] == 2
        assert poll["push_to_flip"]["p50_ms"] >= 0      # 0: flipped before `git push` returned
        assert poll["first_publish_ms"] > 0
        assert poll["memory"]["idle_rss_kib"] > 0
        assert entry["git_clone"]["p50_ms"] > 0
        assert "push_to_flip" in entry["webhook"] or "skipped" in entry["webhook"]
    assert sync["ratios"]["git_clone_large_over_small"] > 0
    assert sync["ratios"]["gitsync_poll_large_over_small"] is not None
