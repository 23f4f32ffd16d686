"""Starting a command: cold in its own group, or warm in a spare, with the same result."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from gitsync import procs
from gitsync.reload.config import build_config
from gitsync.reload.launcher import ColdLauncher, NotStarted, WarmLauncher, launcher_for
from gitsync.reload.systemd import NoActivation
from test_reload import wait_for

# Writes what it sees to ./seen.json (its cwd is the tree).
APP = r"""
import json, os, sys
with open("seen.json", "w") as out:
    json.dump({"pid": os.getpid(), "pgid": os.getpgid(0), "hash": os.environ.get("GITSYNC_HASH"),
               "base": os.environ.get("BASE"), "warm": "json" in sys.modules}, out)
"""


@pytest.fixture
def tree(tmp_path) -> Path:
    path = tmp_path / ".worktrees" / ("ab" * 20)
    path.mkdir(parents=True)
    (path / "app.py").write_text(APP)
    return path


def launcher(tmp_path, *options: str):
    config = build_config(["--link", str(tmp_path / "app"), *options, "--", sys.executable, "app.py"],
                          {**os.environ, "BASE": "from the parent"})
    return launcher_for(config, NoActivation(), threading.Event())


def seen_by(child) -> dict:
    assert child.process.wait(timeout=60) == 0
    return json.loads((Path(child.tree) / "seen.json").read_text())


def test_cold_start_runs_cmd_in_the_tree_in_its_own_group_with_gitsync_hash(tmp_path, tree):
    cold = launcher(tmp_path)
    assert type(cold) is ColdLauncher
    child = cold.start(str(tree))
    seen = seen_by(child)
    assert not child.warm and seen["pid"] == seen["pgid"] == child.pid
    assert seen["hash"] == tree.name and seen["base"] == "from the parent"


def test_warm_start_runs_in_the_spare_and_a_new_spare_follows(tmp_path, tree):
    warm = launcher(tmp_path, "--preload", "json")
    assert type(warm) is WarmLauncher
    try:
        warm.tend()  # makes the first spare
        [spare] = warm.processes()
        child = warm.start(str(tree))
        seen = seen_by(child)
        assert child.warm and child.pid == spare.pid and seen["warm"] and seen["pid"] == seen["pgid"]
        assert seen["hash"] == tree.name and seen["base"] == "from the parent"
        assert warm.processes() == []  # the next spare is due a moment later
        warm.spare_due = 0.0
        warm.tend()
        assert len(warm.processes()) == 1 and warm.processes()[0].pid != spare.pid
    finally:
        warm.close()
    assert warm.processes() == []


def test_a_start_waiting_for_a_spare_is_called_off_at_shutdown(tmp_path, tree):
    warm = launcher(tmp_path, "--preload", "json")
    try:
        warm.tend()
        warm.should_exit.set()
        with pytest.raises(NotStarted):
            warm.start(str(tree))
    finally:
        warm.close()


def test_a_spare_that_never_worked_makes_the_launcher_give_up(tmp_path, tree):
    warm = launcher(tmp_path, "--preload", "no_such_module_gitsync")
    try:
        warm.tend()
        [spare] = warm.processes()
        wait_for(lambda: (warm.tend() or True) and warm.fatal, "the spare to fail", timeout=60)
        assert warm.fatal.startswith("--preload: cannot import 'no_such_module_gitsync'")
        assert warm.should_exit.is_set() and warm.processes() == [] and procs.group_ended(spare)
    finally:
        warm.close()
