"""gitsync-reload's status API and readiness, against real processes, a real link flipped
by the test and the real API polled over HTTP."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gitsync import __version__
from gitsync.reload.config import build_config
from test_reload import (  # noqa: F401  (trees, start_reload, child_script: fixtures)
    Reloader,
    Trees,
    alive,
    child_script,
    fetch,
    free_port,
    gone,
    refused_line,
    stays,
    start_reload,
    trees,
    wait_for,
)

# The app under test. What it does depends on the file `mode` in its tree: ok (serve),
# exit1 (print a traceback, exit 1), SIGSEGV or SIGKILL (die by it), hang (never serve).
# It serves on fd 3 with --listen, else on $APP_PORT; with NOTIFY_READY=1 it sends READY=1
# once it serves; START_DELAY delays serving.
APP = r"""
import json, os, signal, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode = open("mode").read().strip() if os.path.exists("mode") else "ok"
print(f"app {os.environ['GITSYNC_HASH'][:7]} starts in mode {mode}", flush=True)
if mode == "exit1":
    print('  File "app.py", line 3', file=sys.stderr)
    print("SyntaxError: invalid syntax", file=sys.stderr, flush=True)
    sys.exit(1)
if mode in ("SIGSEGV", "SIGKILL"):
    os.kill(os.getpid(), getattr(signal, mode))

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "hash": os.environ["GITSYNC_HASH"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

stop = threading.Event()
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda *_: stop.set())
time.sleep(float(os.environ.get("START_DELAY", "0")))
if mode != "hang":
    if os.environ.get("LISTEN_FDS"):
        sock = socket.socket(fileno=3)
        sock.setblocking(False)  # shared with the other app for a moment
    else:
        sock = socket.create_server(("127.0.0.1", int(os.environ["APP_PORT"])))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    if os.environ.get("NOTIFY_READY") == "1":
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
stop.wait()
"""

STATUS_LINE = re.compile(r"status API on http://127\.0\.0\.1:(\d+)/api/v1/status")


@pytest.fixture
def app(tmp_path) -> Path:
    path = tmp_path / "status_app.py"
    path.write_text(APP)
    return path


def make(trees: Trees, mode: str = "ok") -> str:
    sha = trees.make()
    Path(trees.tree(sha), "mode").write_text(mode)
    return sha


class Api:
    """gitsync-reload's status API, found through the address it logged."""

    def __init__(self, reloader: Reloader):
        self.reloader = reloader
        found = wait_for(lambda: STATUS_LINE.search(reloader.log()), "the status API's address", reloader=reloader)
        self.port = int(found.group(1))

    def get(self, path: str = "/api/v1/status") -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def status(self) -> dict:
        code, body = self.get()
        assert code == 200, body
        return body

    def wait(self, what: str, predicate, timeout: float = 30.0) -> dict:
        """Poll until predicate(status) holds; that status."""
        seen: list[dict] = []

        def check():
            seen[:] = [self.status()]
            return predicate(seen[0])

        try:
            wait_for(check, what, timeout, self.reloader)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- last status ---\n{json.dumps(seen, indent=1)}") from None
        return seen[0]


def start_app(start_reload, trees: Trees, app: Path, *options: str, env: dict | None = None) -> tuple[Reloader, Api]:
    reloader = start_reload("--link", str(trees.link), "--signal", "INT", "--status-bind", "127.0.0.1:0", *options,
                            command=[sys.executable, str(app)], env=env)
    return reloader, Api(reloader)


def is_state(state: str, commit: str | None = None):
    return lambda status: status["state"] == state and (commit is None or status["commit"] == commit)


# --- the settings -------------------------------------------------------------------------------


def test_config_defaults_and_values():
    config = build_config(["--link", "a", "--", "x"], {})
    assert (config.status_bind, config.ready_url, config.ready_after, config.report_output) == (
        ("127.0.0.1", 9101), None, None, False)
    config = build_config(["--link", "a", "--status-bind", "", "--ready-url", "http://127.0.0.1:8000/healthz",
                           "--ready-after", "2s", "--report-output", "--", "x"], {})
    assert (config.status_bind, config.ready_url, config.ready_after, config.report_output) == (
        None, "http://127.0.0.1:8000/healthz", 2.0, True)
    assert build_config(["--link", "a", "--", "x"], {"GITSYNC_RELOAD_STATUS_BIND": "[::1]:0"}).status_bind == ("::1", 0)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--status-bind", "9101"], "--status-bind"),
        (["--status-bind", "127.0.0.1:99999"], "--status-bind"),
        (["--ready-url", "ftp://127.0.0.1/"], "--ready-url"),
        (["--ready-url", "127.0.0.1:8000/healthz"], "--ready-url"),
        (["--ready-url", "http://127.0.0.1:port/"], "--ready-url"),
        (["--ready-after", "soon"], "--ready-after"),
        (["--ready-after", "20s"], "--ready-after"),  # never before the 10s --ready-timeout
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, argv, named):
    assert named in refused_line(tmp_path, ["--link", "a", *argv, "--", "x"], {})


def test_a_status_address_in_use_exits_1_with_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gitsync.reload", "--link", str(tmp_path / "app"), "--status-bind",
             f"127.0.0.1:{port}", "--", sys.executable, "-c", "pass"],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"gitsync-reload: error: --status-bind 127.0.0.1:{port}: cannot listen: Address already in use"]


# --- states, fields and readiness ---------------------------------------------------------------


def test_states_through_start_ready_flip_starting_ready(trees, start_reload, app):
    """Without --listen, --ready-url decides: starting until the app answers, then ready."""
    first, second = make(trees), make(trees)
    trees.flip(first)
    port = free_port()
    reloader, api = start_app(start_reload, trees, app, "--ready-url", f"http://127.0.0.1:{port}/",
                              env={"APP_PORT": str(port), "START_DELAY": "1"})
    starting = api.wait("starting", is_state("starting", first))
    assert starting["attempt"] == {"commit": first, "state": "starting", "reason": None}
    assert starting["target"] == first and starting["version"] == __version__

    ready = api.wait("ready", is_state("ready", first))
    assert fetch(port)["hash"] == first
    assert f"answers http://127.0.0.1:{port}/: ready" in reloader.log()  # the URL made it ready, not the clock
    pid = ready["pid"]
    assert ready["attempt"] is None and ready["target"] == first and alive(pid)
    assert ready["trees"] == [{"role": "serving", "commit": first, "path": trees.tree(first), "pid": pid}]

    trees.flip(second)
    flipped = api.wait("starting on the new commit", is_state("starting", second))
    assert flipped["target"] == second and flipped["attempt"]["commit"] == second and flipped["pid"] != pid
    again = api.wait("ready on the new commit", is_state("ready", second))
    assert again["attempt"] is None and fetch(port)["hash"] == second and gone(pid)
    assert [tree["commit"] for tree in again["trees"]] == [second]


@pytest.mark.parametrize("report_output", [True, False], ids=["report-output", "no-output"])
def test_a_command_that_exits_1_is_a_failed_attempt_and_each_failed_start_is_reported(
        trees, start_reload, app, report_output):
    broken = make(trees, "exit1")
    trees.flip(broken)
    reloader, api = start_app(start_reload, trees, app, *(["--report-output"] if report_output else []),
                              env={"APP_PORT": str(free_port())})
    failed = api.wait("the attempt to fail", is_state("failed"))
    assert failed["commit"] is None and failed["pid"] is None and failed["target"] == broken
    attempt = failed["attempt"]
    assert (attempt["commit"], attempt["state"], attempt["reason"]) == (broken, "failed", "exited 1")
    if report_output:
        lines = attempt["output"].splitlines()  # stdout and stderr: each in order, read side by side
        assert sorted(lines) == sorted([f"app {broken[:7]} starts in mode exit1", '  File "app.py", line 3',
                                        "SyntaxError: invalid syntax"])
        assert lines.index('  File "app.py", line 3') < lines.index("SyntaxError: invalid syntax")
    else:
        assert "output" not in attempt
    wait_for(lambda: reloader.start_count() >= 3, "it to be started again (back-off)", reloader=reloader)
    assert api.wait("still failed", is_state("failed"))["attempt"]["reason"] == "exited 1"
    assert "SyntaxError: invalid syntax" in reloader.log()  # the app's own output still reaches the log


@pytest.mark.parametrize("signum", ["SIGSEGV", "SIGKILL"])
def test_a_command_killed_by_a_signal_says_which(trees, start_reload, app, signum):
    trees.flip(make(trees, signum))
    reloader, api = start_app(start_reload, trees, app, env={"APP_PORT": str(free_port())})
    failed = api.wait("the attempt to fail", is_state("failed"))
    assert failed["attempt"]["reason"] == f"killed by {signum}"


def test_ready_after_counts_a_command_ready_once_it_has_stayed_up(trees, start_reload, app):
    sha = make(trees)
    trees.flip(sha)
    reloader, api = start_app(start_reload, trees, app, "--ready-after", "3s", env={"APP_PORT": str(free_port())})
    starting = api.wait("starting", is_state("starting", sha))
    ready = api.wait("ready", is_state("ready", sha))
    assert ready["pid"] == starting["pid"] and ready["attempt"] is None
    assert "stayed up 3s: ready" in reloader.log()


def test_ready_1_counts_at_once_even_without_listen(trees, start_reload, app):
    sha = make(trees)
    trees.flip(sha)
    reloader, api = start_app(start_reload, trees, app, "--ready-after", "9s",
                              env={"APP_PORT": str(free_port()), "NOTIFY_READY": "1"})
    api.wait("ready", is_state("ready", sha))
    assert "is ready: ready" in reloader.log()


def test_with_listen_a_new_command_not_ready_in_time_fails_and_the_old_one_keeps_serving(trees, start_reload, app):
    first, hanging = make(trees), make(trees, "hang")
    trees.flip(first)
    port = free_port()
    reloader, api = start_app(start_reload, trees, app, "--listen", f"127.0.0.1:{port}", "--ready-timeout", "2s",
                              "--ready-url", f"http://127.0.0.1:{free_port()}/never", env={"NOTIFY_READY": "1"})
    pid = api.wait("ready", is_state("ready", first))["pid"]

    trees.flip(hanging)
    starting = api.wait("the new one starting", is_state("starting", first))
    assert starting["attempt"]["commit"] == hanging
    assert [tree["role"] for tree in starting["trees"]] == ["serving", "starting"]
    new_pid = starting["trees"][1]["pid"]
    failed = api.wait("the attempt to fail", is_state("failed", first))
    assert failed["attempt"] == {"commit": hanging, "state": "failed", "reason": "not ready after 2s"}
    assert failed["pid"] == pid and failed["target"] == hanging
    assert fetch(port)["pid"] == pid  # the old one serves on
    wait_for(lambda: gone(new_pid), "the new one to be stopped", reloader=reloader)

    trees.flip(first)  # the sidecar rolls back
    back = api.wait("ready again", is_state("ready", first))
    assert back["pid"] == pid and back["attempt"] is None and back["target"] == first
    assert fetch(port)["pid"] == pid


def test_a_flip_back_to_the_running_commit_restarts_nothing(trees, start_reload, app):
    """With --listen the old command serves while the new one crash-loops; a rollback
    stops the pending one and the state is ready again, on the same pid."""
    good, broken = make(trees), make(trees, "exit1")
    trees.flip(good)
    port = free_port()
    reloader, api = start_app(start_reload, trees, app, "--listen", f"127.0.0.1:{port}", "--report-output",
                              env={"NOTIFY_READY": "1"})
    pid = api.wait("ready", is_state("ready", good))["pid"]
    trees.flip(broken)
    failed = api.wait("the new one to fail", is_state("failed", good))
    assert failed["pid"] == pid and failed["attempt"]["reason"] == "exited 1"
    assert "SyntaxError: invalid syntax" in failed["attempt"]["output"]
    wait_for(lambda: reloader.start_count() >= 3, "the new one to crash again", reloader=reloader)

    starts = reloader.start_count()
    trees.flip(good)
    back = api.wait("ready again", is_state("ready", good))
    assert back["pid"] == pid and back["attempt"] is None and fetch(port)["pid"] == pid
    reloader.wait_log("nothing to restart")
    api.wait("the pending one to be gone", lambda status: [tree["commit"] for tree in status["trees"]] == [good])
    count = reloader.start_count()
    assert count <= starts + 1  # at most the retry that was under way at the flip
    # No retry of the broken commit is left scheduled: nothing starts, the same pid serves.
    assert stays(lambda: reloader.start_count() == count and api.status()["pid"] == pid, 3.0)


# --- the server ---------------------------------------------------------------------------------


def test_unknown_paths_are_404_and_only_get_is_answered(trees, start_reload, app):
    trees.flip(make(trees))
    reloader, api = start_app(start_reload, trees, app, env={"APP_PORT": str(free_port())})
    code, body = api.get("/api/v2/status")
    assert code == 404 and "not found" in body["error"]
    request = urllib.request.Request(f"http://127.0.0.1:{api.port}/api/v1/status", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405 and json.loads(refused.value.read())["error"]


def test_sigterm_stops_everything_and_closes_the_status_server(trees, start_reload, app):
    sha = make(trees)
    trees.flip(sha)
    reloader, api = start_app(start_reload, trees, app, env={"APP_PORT": str(free_port())})
    pid = api.wait("ready", is_state("ready", sha))["pid"]
    reloader.send(signal.SIGTERM)
    assert reloader.exit_code(timeout=30) == 0
    assert gone(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", api.port), timeout=5).close()


def test_status_bind_empty_turns_the_api_off(trees, start_reload, app):
    sha = make(trees)
    trees.flip(sha)
    reloader = start_reload("--link", str(trees.link), "--status-bind", "", command=[sys.executable, str(app)],
                            env={"APP_PORT": str(free_port())})
    reloader.wait_log("stayed up 1s: ready")
    assert "status API" not in reloader.log()
    assert not [conn for conn in _listening_ports(reloader.process.pid)]


def _listening_ports(pid: int) -> list[str]:
    """TCP sockets the process listens on (from /proc: its fds matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(fields[1])
    return ports


def test_a_step_before_the_command_that_fails_is_a_failed_attempt(trees):
    """The hook a step before the command (preparing a new tree) reports through: the
    launcher raises StartFailed; the loop records the attempt and retries with the back-off."""
    from gitsync.reload.launcher import ColdLauncher, StartFailed
    from gitsync.reload.supervisor import Supervisor
    from gitsync.reload.systemd import NoActivation

    class FailingStep(ColdLauncher):
        def start(self, tree: str, extra=None):
            raise StartFailed("prepare failed: npm ERR! missing script: build", output="npm ERR! missing script: build")

    sha = make(trees)
    trees.flip(sha)
    config = build_config(["--link", str(trees.link), "--", sys.executable, "-c", "pass"], {})
    supervisor = Supervisor(config, NoActivation())
    supervisor.launcher = FailingStep(config, supervisor.activation, supervisor.should_exit)
    supervisor.start()
    supervisor.publish()
    status = supervisor.board.read()
    assert (status["state"], status["commit"], status["target"]) == ("failed", None, sha)
    assert status["attempt"] == {"commit": sha, "state": "failed", "reason": "prepare failed: npm ERR! missing script: build",
                                 "output": "npm ERR! missing script: build"}
    assert supervisor.record.backoff.due is not None  # retried with the crash back-off


def test_signal_only_reports_the_commit_it_was_told_to_reload_into(trees, start_reload):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    reloader = start_reload("--link", str(trees.link), "--signal-only", "--status-bind", "127.0.0.1:0",
                            args=("--handle-signals",))
    api = Api(reloader)
    pid = api.wait("ready", is_state("ready", first))["pid"]
    trees.flip(second)
    assert api.wait("the new commit", is_state("ready", second))["pid"] == pid
    wait_for(lambda: len(reloader.records("SIGHUP")) == 1, "one SIGHUP", reloader=reloader)
    trees.flip(first)  # back: it must be told again, it runs the second commit now
    wait_for(lambda: len(reloader.records("SIGHUP")) == 2, "a second SIGHUP", reloader=reloader)
    assert api.wait("the first commit again", is_state("ready", first))["pid"] == pid
