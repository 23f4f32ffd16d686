"""The `gitsync` command as a user runs it: exit codes, signals, files, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from support.repos import git, published_sha
from support.processes import pids_mentioning
from support.waiting import stays, wait_for

GITSYNC = str(Path(sys.executable).parent / "gitsync")


def run_gitsync(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([GITSYNC, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_flags_with_their_variables_and_defaults():
    proc = run_gitsync("--help")
    assert proc.returncode == 0
    assert "--sync-timeout" in proc.stdout and "GITSYNC_SYNC_TIMEOUT" in proc.stdout
    assert "default 10s" in proc.stdout and "examples:" in proc.stdout


def test_bad_flag_exits_2_with_one_line():
    proc = run_gitsync("--repo", "x", "--root", "/tmp/x", "--period", "fast")
    assert proc.returncode == 2
    assert proc.stderr == "gitsync: error: --period: invalid duration 'fast' (use e.g. 500ms, 10s, 2m)\n"
    assert run_gitsync("--nope").stderr.count("\n") == 1


def test_one_time_publishes_and_exits_0(remote, tmp_path):
    proc = run_gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--one-time")
    assert proc.returncode == 0, proc.stderr
    assert published_sha(tmp_path / "root" / "repo.git") == remote.head()


def test_one_time_with_a_bad_ref_exits_1_naming_the_step(remote, tmp_path):
    proc = run_gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--one-time",
                       "--ref", "nope")
    assert proc.returncode == 1
    assert "sync failed" in proc.stderr and "ls-remote: ref 'nope' not found" in proc.stderr


def test_flags_from_environment(remote, tmp_path, gitsync):
    proc = gitsync(env={"GITSYNC_REPO": remote.url, "GITSYNC_ROOT": str(tmp_path / "root"),
                        "GITSYNC_ONE_TIME": "true", "GITSYNC_LINK": "current"})
    assert proc.wait(30) == 0, proc.output
    assert published_sha(tmp_path / "root" / "current") == remote.head()


def test_polls_publish_new_commits(remote, tmp_path, gitsync):
    link = tmp_path / "root" / "repo.git"
    gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--period", "100ms",
            "--http-bind", "")
    wait_for(lambda: published_sha(link) == remote.head(), message="first publish")
    new = remote.commit_and_push({"x": "2"})
    wait_for(lambda: published_sha(link) == new, message="the pushed commit")


# gitsync stops within 2 s of a signal (README); the test waits far longer, so that only a
# gitsync that waits for its git (hung for 10 minutes here) or its period (an hour)
# fails, never a busy machine. How fast it stops is for bench/ to measure.
STOP_DEADLINE = 30.0
HUNG_GIT = 600


def stops_cleanly(proc, signum: int) -> bool:
    """The signal makes gitsync exit 0 within STOP_DEADLINE."""
    proc.signal(signum)
    try:
        status = proc.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {STOP_DEADLINE} s after the signal:\n{proc.output}")
    assert status == 0, proc.output
    return True


def hung_remote(tmp_path: Path) -> None:
    slow = tmp_path / "slow-pack-objects"
    slow.write_text(f'#!/bin/sh\nsleep {HUNG_GIT}\nexec "$@"\n')
    slow.chmod(0o755)
    git("config", "--global", "uploadpack.packObjectsHook", str(slow))


def test_sigterm_stops_promptly_even_mid_fetch(remote, tmp_path, gitsync):
    hung_remote(tmp_path)
    proc = gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--http-bind", "")
    wait_for(lambda: pids_mentioning("slow-pack-objects"), message="a hung fetch")
    assert stops_cleanly(proc, signal.SIGTERM)
    wait_for(lambda: not pids_mentioning("slow-pack-objects"), message="the hung git to be killed")


def test_sigint_stops_an_idle_loop(remote, tmp_path, gitsync):
    link = tmp_path / "root" / "repo.git"
    proc = gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--period", "1h",
                   "--http-bind", "")
    wait_for(lambda: published_sha(link), message="first publish")
    assert stops_cleanly(proc, signal.SIGINT)


def test_sync_on_signal(remote, tmp_path, gitsync):
    link = tmp_path / "root" / "repo.git"
    proc = gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--period", "1h",
                   "--sync-on-signal", "SIGHUP", "--http-bind", "")
    wait_for(lambda: published_sha(link), message="first publish")
    new = remote.commit_and_push({"x": "2"})
    # the period is an hour: nothing moves by itself
    assert stays(lambda: published_sha(link) != new, 0.3)
    proc.signal(signal.SIGHUP)
    wait_for(lambda: published_sha(link) == new, message="the signal-triggered sync")
    wait_for(lambda: "trigger=signal" in proc.output, message="the sync's log line")


def test_error_file_written_on_failure_and_removed_on_success(remote, tmp_path, gitsync):
    root = tmp_path / "root"
    error_file = root / "error.txt"
    remote.switch("feature", create=True)
    remote.commit_and_push({"f": "1"}, branch="feature")
    gitsync("--repo", remote.url, "--root", str(root), "--ref", "feature", "--period", "100ms",
            "--max-failures", "-1", "--error-file", "error.txt", "--http-bind", "")
    wait_for(lambda: published_sha(root / "repo.git"), message="first publish")
    assert not error_file.exists()
    remote.delete_branch("feature")
    wait_for(error_file.exists, message="the error file")
    assert "ref 'feature' not found on the remote" in error_file.read_text()
    remote.commit_and_push({"f": "2"}, branch="feature")
    wait_for(lambda: not error_file.exists(), message="the error file to go")


def test_touch_file_moves_on_each_publish(remote, tmp_path, gitsync):
    root = tmp_path / "root"
    touch = tmp_path / "touched"
    gitsync("--repo", remote.url, "--root", str(root), "--period", "100ms",
            "--touch-file", str(touch), "--http-bind", "")
    wait_for(touch.exists, message="the touch file")
    first = touch.stat().st_mtime_ns
    new = remote.commit_and_push({"x": "2"})
    wait_for(lambda: published_sha(root / "repo.git") == new, message="second publish")
    wait_for(lambda: touch.stat().st_mtime_ns > first, message="the touch file to move")


def test_json_logs(remote, tmp_path):
    proc = run_gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--one-time",
                       "--log-format", "json")
    assert proc.returncode == 0
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    published = [entry for entry in lines if entry["msg"].startswith("sync published")]
    assert published and published[0]["level"] == "info"
    assert published[0]["time"].endswith("Z")


def test_credentials_in_the_url_never_reach_the_output(tmp_path):
    proc = run_gitsync("--repo", "https://bob:hunter2@127.0.0.1:9/nope.git", "--root",
                       str(tmp_path / "root"), "--one-time", "--sync-timeout", "5s")
    assert proc.returncode == 1
    assert "hunter2" not in proc.stderr and "sync failed" in proc.stderr


def test_a_busy_api_port_is_one_line_and_exit_1(remote, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_gitsync("--repo", remote.url, "--root", str(tmp_path / "root"),
                           "--http-bind", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"gitsync: error: --http-bind: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in proc.stderr


def test_sigterm_with_the_api_running_always_stops(remote, tmp_path, gitsync):
    """With several threads, the kernel may hand SIGTERM to any of them; gitsync must notice
    anyway (a main thread blocked forever in a wait once hung here)."""
    for attempt in range(12):
        proc = gitsync("--repo", remote.url, "--root", str(tmp_path / f"root{attempt}"),
                       "--http-bind", "127.0.0.1:0", "--period", "1h")
        wait_for(lambda: "serving the HTTP API" in proc.output, message="the API to start")
        assert stops_cleanly(proc, signal.SIGTERM), f"attempt {attempt}: {proc.output}"


def test_a_misspelt_variable_is_warned_about_with_the_closest_name(remote, tmp_path):
    env = {**os.environ, "GITSYNC_PERIOUD": "1s"}
    proc = subprocess.run([GITSYNC, "--repo", remote.url, "--root", str(tmp_path / "root"), "--one-time"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    assert ("GITSYNC_PERIOUD is not a gitsync setting and is ignored; did you mean GITSYNC_PERIOD?"
            in proc.stderr)
