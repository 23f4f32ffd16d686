"""The three ways of moving to a new tree, driven through real processes and signals."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from gitsync import procs
from gitsync.reload.child import Child, Stopper
from gitsync.reload.config import build_config
from gitsync.reload.record import Record
from gitsync.reload.rollover import HandOff, Restart, SignalOnly, rollover_for, stop_signal
from test_reload import alive, wait_for

# Writes the name of every signal it gets to ./signals (its cwd), exits 0 on TERM/INT.
APP = r"""
import os, signal, sys, time
def on_signal(signum, frame):
    with open("signals", "a") as out:
        out.write(signal.Signals(signum).name + "\n")
    if signum != signal.SIGHUP:
        sys.exit(0)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, on_signal)
open("started", "w").close()
while True:
    time.sleep(0.05)
"""


class Apps:
    """Starts the app in trees under tmp_path as real process groups; kills them all at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.started: list[Child] = []

    def start(self, name: str, code: str = APP) -> Child:
        tree = self.root / name
        tree.mkdir()
        process = procs.spawn_group([sys.executable, "-c", code], cwd=str(tree), env=os.environ)
        child = Child(process, str(tree), time.monotonic())
        self.started.append(child)
        if code is APP:
            wait_for(lambda: (tree / "started").exists(), f"{name} to start", timeout=30)
        return child

    def signals(self, child: Child) -> list[str]:
        path = Path(child.tree) / "signals"
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def apps(tmp_path):
    made = Apps(tmp_path)
    yield made
    for child in made.started:
        procs.kill_group(child.process)
        child.process.wait(timeout=10)


def strategy(tmp_path, *options: str):
    config = build_config(["--link", str(tmp_path / "app"), "--grace", "20s", *options, "--", "app"], {})
    record, force = Record(), threading.Event()
    stopper = Stopper(stop_signal(config), config.grace, force, lambda: [c.process for c in record.children()])
    return rollover_for(config, record, stopper), record


@pytest.mark.parametrize("options, kind", [((), Restart), (("--signal-only",), SignalOnly),
                                           (("--listen", "127.0.0.1:0"), HandOff),
                                           (("--signal-only", "--listen", "127.0.0.1:0"), SignalOnly)])
def test_the_options_choose_the_strategy(tmp_path, options, kind):
    rollover, _ = strategy(tmp_path, *options)
    assert type(rollover) is kind


def test_restart_stops_the_serving_command_with_the_signal_and_asks_for_a_start(tmp_path, apps):
    rollover, record = strategy(tmp_path, "--signal", "INT")
    record.serving = old = apps.start("one")
    assert rollover.follow(str(tmp_path / "two")) is True
    assert record.serving is None and record.status == 0
    assert apps.signals(old) == ["SIGINT"] and procs.group_ended(old.process)


def test_signal_only_tells_the_leader_and_keeps_it_serving(tmp_path, apps):
    rollover, record = strategy(tmp_path, "--signal-only")
    record.serving = app = apps.start("one")
    assert rollover.follow(str(tmp_path / "two")) is False
    wait_for(lambda: apps.signals(app) == ["SIGHUP"], "the app to get SIGHUP", timeout=30)
    assert record.serving is app and alive(app.pid) and record.tree == str(tmp_path / "two")
    assert stop_signal(rollover.config) == signal.SIGTERM  # stopping it for good is not "reload"


def test_hand_off_keeps_the_old_one_serving_until_the_new_one_is_ready_then_drains_it(tmp_path, apps):
    rollover, record = strategy(tmp_path, "--listen", "127.0.0.1:0")
    record.serving = old = apps.start("one")
    assert rollover.follow(str(tmp_path / "two")) is True  # start the new one beside it
    record.starting = new = apps.start("two")
    rollover.tend()
    assert record.serving is old and record.starting is new and apps.signals(old) == []
    new.ready = True  # as if it had sent READY=1
    rollover.tend()
    assert record.serving is new and record.starting is None and record.draining == [old]
    wait_for(lambda: (rollover.tend() or True) and not record.draining, "the old one to drain", timeout=30)
    assert apps.signals(old) == ["SIGTERM"] and alive(new.pid)


def test_hand_off_a_new_command_that_exits_before_ready_leaves_the_old_one_and_says_why(tmp_path, apps):
    rollover, record = strategy(tmp_path, "--listen", "127.0.0.1:0")
    record.serving = old = apps.start("one")
    rollover.follow(str(tmp_path / "two"))
    record.starting = apps.start("two", code="raise SystemExit(3)")
    wait_for(lambda: (rollover.tend() or True) and record.starting is None, "the new one to fail", timeout=30)
    assert record.serving is old and alive(old.pid) and apps.signals(old) == []
    assert record.failure == "exited 3" and record.status == 3 and record.backoff.due is not None


def test_hand_off_takes_over_after_the_ready_timeout_without_ready(tmp_path, apps):
    rollover, record = strategy(tmp_path, "--listen", "127.0.0.1:0", "--ready-timeout", "0s")
    record.serving = old = apps.start("one")
    record.starting = new = apps.start("two")
    rollover.tend()
    assert record.serving is new and record.draining == [old]


def test_hand_off_a_second_flip_drains_the_one_not_ready_yet(tmp_path, apps):
    rollover, record = strategy(tmp_path, "--listen", "127.0.0.1:0")
    record.serving = old = apps.start("one")
    record.starting = unready = apps.start("two")
    assert rollover.follow(str(tmp_path / "three")) is True
    assert record.starting is None and record.draining == [unready] and record.serving is old
    wait_for(lambda: apps.signals(unready) == ["SIGTERM"], "the unready one to be told to stop", timeout=30)
