"""--app-signal with --app-process (gitsync/appsignal.py), with real processes here.

An "app" is a small Python process of its own session whose command line carries a
token unique to the test; on SIGHUP it appends a line to a marker file. gitsync runs
as a user runs it, against a real remote, and its status JSON says what it sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest
from support.ports import free_port
from support.processes import alive, running, start_group, stop_group
from support.waiting import stays, wait_for

from gitsync.appsignal import AppSignaller

GITSYNC = str(Path(sys.executable).parent / "gitsync")
APP = textwrap.dedent("""\
    import pathlib, signal, sys
    marker = pathlib.Path(sys.argv[1])
    def reload(_signum, _frame):
        with marker.open("a") as out:
            out.write("HUP\\n")
    signal.signal(signal.SIGHUP, reload)
    marker.write_text("")
    while True:
        signal.pause()
""")


@pytest.fixture
def app(tmp_path):
    """start(token) -> (the app's Popen, its marker file); every app is stopped at the end."""
    script = tmp_path / "sidecar_app.py"
    script.write_text(APP)
    started = []

    def start(token: str):
        marker = tmp_path / f"marker-{token}"
        proc = start_group([sys.executable, str(script), str(marker), token])
        started.append(proc)
        wait_for(marker.exists, timeout=30, message="the app to install its SIGHUP handler")
        return proc, marker

    yield start
    for proc in started:
        stop_group(proc)


def token() -> str:
    return f"app-{uuid.uuid4().hex[:12]}"


def hups(marker: Path) -> int:
    return marker.read_text().count("HUP")


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=10) as response:
        return json.loads(response.read())


def app_signal(port: int) -> dict | None:
    try:
        return status(port).get("app_signal")
    except OSError:
        return None


def last_for(port: int, sha: str) -> dict:
    """The status's app_signal.last once it is about commit sha."""
    return wait_for(lambda: (found := app_signal(port)) and (found["last"] or {}).get("commit") == sha
                    and found["last"], timeout=60, message=f"app_signal.last for {sha}")


def start_gitsync(gitsync, remote, tmp_path, sig: str, pattern: str) -> int:
    """gitsync polling the remote; the pattern comes from GITSYNC_APP_PROCESS, off its argv."""
    port = free_port()
    gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--period", "100ms",
            "--http-bind", f"127.0.0.1:{port}", "--app-signal", sig,
            env={"GITSYNC_APP_PROCESS": pattern})
    wait_for(lambda: app_signal(port) is not None and app_signal(port)["last"], timeout=60,
             message="gitsync's first publish")
    return port


def test_hup_reaches_the_app_after_each_publish(gitsync, remote, tmp_path, app):
    name = token()
    proc, marker = app(name)
    port = start_gitsync(gitsync, remote, tmp_path, "HUP", rf"sidecar_app\.py \S+ {name}$")
    first = last_for(port, remote.head())
    # The app ran before the first publish: it was told too.
    assert first["pids"] == [proc.pid] and first["error"] is None, first
    wait_for(lambda: hups(marker) == 1, timeout=30, message="the first HUP")

    sha = remote.commit_and_push({"README.md": "second\n"}, "second")
    last = last_for(port, sha)
    assert last["pids"] == [proc.pid] and last["error"] is None, last
    wait_for(lambda: hups(marker) == 2, timeout=30, message="the second HUP")
    assert alive(proc.pid)
    answer = status(port)["app_signal"]
    assert answer["signal"] == "SIGHUP" and answer["pattern"] == rf"sidecar_app\.py \S+ {name}$"


def test_term_ends_the_app(gitsync, remote, tmp_path, app):
    name = token()
    port = start_gitsync(gitsync, remote, tmp_path, "TERM", rf"sidecar_app\.py \S+ {name}$")
    last_for(port, remote.head())
    proc, _marker = app(name)   # started after the first publish, as a restarted container is
    sha = remote.commit_and_push({"README.md": "second\n"}, "second")
    last = last_for(port, sha)
    assert last["pids"] == [proc.pid] and last["error"] is None, last
    assert proc.wait(30) == -signal.SIGTERM


def test_no_matching_process_is_an_error_and_kills_nothing(gitsync, remote, tmp_path, app):
    bystander, marker = app(token())
    port = start_gitsync(gitsync, remote, tmp_path, "KILL", rf"sidecar_app\.py \S+ {token()}$")
    # At the first publish the app may not run yet: no error then.
    first = last_for(port, remote.head())
    assert first["pids"] == [] and first["error"] is None, first
    sha = remote.commit_and_push({"README.md": "second\n"}, "second")
    last = last_for(port, sha)
    assert last["pids"] == [] and "no process matches --app-process" in last["error"], last
    assert status(port)["commit"] == sha   # the publish itself stands
    assert alive(bystander.pid) and hups(marker) == 0


def test_a_pattern_matching_gitsync_itself_is_refused_with_one_line(remote, tmp_path):
    proc = subprocess.run([GITSYNC, "--repo", remote.url, "--root", str(tmp_path / "root"),
                           "--app-signal", "KILL", "--app-process", "gitsync"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("gitsync: error: --app-process: 'gitsync' matches gitsync's own "
                                  "command line") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "root").exists()
    # The same words, unanchored, given as a flag: they match the flag's own text.
    flag = subprocess.run([GITSYNC, "--repo", remote.url, "--root", str(tmp_path / "root"),
                           "--app-signal", "HUP", "--app-process", "node server"],
                          capture_output=True, text=True, timeout=30)
    assert flag.returncode == 2 and "matches gitsync's own command line" in flag.stderr


# --- the signaller on its own, from this process -----------------------------------

def test_own_children_and_process_group_are_skipped_and_named(tmp_path):
    name = token()
    argv = [sys.executable, "-c", "import time; time.sleep(300)", name]
    with running(argv) as child:    # our child, in a session of its own
        member = subprocess.Popen(argv)   # our child, in our own process group
        try:
            signaller = AppSignaller(signal.SIGKILL, rf"time\.sleep\(300\) {name}$")
            record = signaller.signal_app("a" * 40)
            assert record["pids"] == [], record
            for pid in (child.pid, member.pid):
                assert f"pid {pid} " in record["error"] and "gitsync's own process" in record["error"]
            assert stays(lambda: alive(child.pid) and alive(member.pid), 0.3)
        finally:
            member.kill()
            member.wait()


def signal_as(uid: int, signaller: AppSignaller) -> dict:
    """signaller.signal_app() in a forked child that runs as uid; its record, and its stderr."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: drop to uid, signal, report, and leave without pytest's cleanup
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, json.dumps(signaller.signal_app("b" * 40)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to signal as another user")
def test_another_users_process_is_reported_not_fatal(app):
    name = token()
    proc, marker = app(name)   # runs as root
    record = signal_as(65534, AppSignaller(signal.SIGHUP, rf"sidecar_app\.py \S+ {name}$"))
    assert record["pids"] == [] and f"pid {proc.pid} " in record["error"], record
    assert "not permitted to send SIGHUP" in record["error"]
    assert alive(proc.pid) and hups(marker) == 0
