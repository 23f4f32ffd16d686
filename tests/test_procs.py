"""gitsync.procs with real processes: groups, signals, exit statuses, orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gitsync import procs
from test_reload import alive, wait_for

REPO = Path(__file__).resolve().parents[1]

# Leads a group of two: it starts a grandchild (same group), writes both pids, and waits.
PARENT = r"""
import json, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(sys.argv[1], "w") as out:
    json.dump({"grandchild": grandchild.pid}, out)
time.sleep(120)
"""


@pytest.fixture
def group(tmp_path):
    """A running group of two (leader and grandchild), killed at the end whatever the test did."""
    pids = tmp_path / "pids.json"
    proc = procs.spawn_group([sys.executable, "-c", PARENT, str(pids)], cwd=str(tmp_path), env=os.environ)
    grandchild = wait_for(lambda: pids.exists() and pids.stat().st_size and json.loads(pids.read_text()),
                          "the grandchild to start", timeout=30)["grandchild"]
    yield proc, grandchild
    procs.kill_group(proc)
    proc.wait(timeout=10)


def test_spawn_group_makes_a_new_session_whose_group_holds_the_grandchild(group):
    proc, grandchild = group
    assert os.getpgid(proc.pid) == proc.pid and os.getsid(proc.pid) == proc.pid
    assert os.getpgid(grandchild) == proc.pid
    assert procs.group_alive(proc.pid) and not procs.group_ended(proc)


def test_kill_group_ends_the_leader_and_the_grandchild(group):
    proc, grandchild = group
    procs.kill_group(proc)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    wait_for(lambda: not alive(grandchild), "the grandchild to die with its group", timeout=30)
    wait_for(lambda: not procs.group_alive(proc.pid), "the group to be empty", timeout=30)
    assert procs.group_ended(proc)
    procs.kill_group(proc)  # a group already gone is no error
    procs.signal_group(proc.pid, signal.SIGTERM)


def test_wait_group_returns_once_the_whole_group_ended(group):
    proc, grandchild = group
    procs.signal_group(proc.pid, signal.SIGTERM)
    assert procs.wait_group(proc, timeout=30, interrupt=threading.Event())
    assert not alive(grandchild) and proc.returncode == -signal.SIGTERM


def test_wait_group_gives_up_at_the_timeout_or_the_interrupt_and_leaves_the_group_running(group):
    proc, grandchild = group
    assert not procs.wait_group(proc, timeout=0.1, interrupt=threading.Event())
    interrupt = threading.Event()
    interrupt.set()
    assert not procs.wait_group(proc, timeout=60, interrupt=interrupt)
    assert alive(proc.pid) and alive(grandchild)


@pytest.mark.parametrize(
    "code, described",
    [("raise SystemExit(3)", "exited 3"), ("pass", "exited 0"),
     ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "killed by SIGTERM"),
     ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL")],
)
def test_exit_status_is_what_a_shell_reports_and_describe_exit_says_how(code, described):
    proc = subprocess.run([sys.executable, "-c", code], timeout=30)
    shell = subprocess.run(["sh", "-c", '"$0" -c "$1"; echo $?', sys.executable, code],
                           capture_output=True, text=True, timeout=30)
    assert procs.exit_status(proc.returncode) == int(shell.stdout.split()[-1])
    assert procs.describe_exit(proc.returncode) == described


def test_exit_status_of_a_process_never_seen_to_end_is_a_kill():
    assert procs.exit_status(None) == 128 + signal.SIGKILL
    assert procs.describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"


# Becomes a subreaper, then starts a child that starts a grandchild and exits at once:
# the grandchild is re-parented to this program, ends, and must be reaped by reap_orphans(),
# while a child of its own that exited with 5 is left to its Popen, which keeps the status.
# (In a program of its own: reaping in pytest's process could take another test's child.)
SUBREAPER = r"""
import json, os, subprocess, sys, time
from gitsync import procs
procs.become_subreaper()
middle = subprocess.run([sys.executable, "-c",
    "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.2)']).pid)"],
    capture_output=True, text=True)
orphan = int(middle.stdout)
def state():
    try:
        return open(f"/proc/{orphan}/stat").read().rsplit(")", 1)[1].split()[:2]
    except FileNotFoundError:
        return None
deadline = time.monotonic() + 30
while state() and state()[0] != "Z" and time.monotonic() < deadline:
    time.sleep(0.01)
zombie = state()
own = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"])
while open(f"/proc/{own.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
    time.sleep(0.01)
procs.reap_orphans([own])
print(json.dumps({"zombie": zombie, "mine": str(os.getpid()), "after": state(), "own": own.returncode}))
"""


def test_a_subreaper_adopts_an_orphan_and_reap_orphans_collects_it_leaving_our_children_to_popen():
    result = subprocess.run([sys.executable, "-c", SUBREAPER], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["zombie"] == ["Z", report["mine"]]  # ended, adopted by us, not yet reaped
    assert report["after"] is None  # reaped: not even a zombie is left
    assert report["own"] == 5  # our own child: Popen reaped it and kept its status
