"""bench/harden.py runs end to end against a real gitsync, briefly (no timing thresholds:
the figures are measured by `make harden` only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_short_attack_run_finds_no_fault_and_loses_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "harden.py"), "--quick", "--seconds", "2",
         "--connections", "300", "--fuzz", "5", "--only", "baseline,dribble,fuzz",
         "--out", str(tmp_path), "--write", str(tmp_path / "reliability.md")],
        capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    table = (tmp_path / "reliability.md").read_text()
    assert "| 300 dribbling connections, one client, 2 s |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 4     # the header and three attacks
    assert all(line.endswith("| nothing |") for line in rows[1:])
