"""gitsync-reload against real processes, real signals and real symlink flips under tmp_path."""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gitsync.reload.config import ConfigError, build_config
from gitsync.reload.systemd import PYTHON_SHIM, SH_SHIM
from support import waiting
from support.ports import free_port
from support.processes import alive, gone, kill_group
from support.waiting import DEFAULT_TIMEOUT, stays

REPO = Path(__file__).resolve().parents[1]
WATCHFILES = Path(sys.executable).with_name("watchfiles")

# The command under test: records what it sees (cwd, GITSYNC_HASH, pid, group) and the
# signals it gets, one JSON line per event, in the file named by $RECORD.
CHILD = r"""
import json, os, signal, subprocess, sys, time

def record(event, **extra):
    line = json.dumps({"event": event, "pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(),
                       "hash": os.environ.get("GITSYNC_HASH"), "listen_fds": os.environ.get("LISTEN_FDS"),
                       "time": time.time(), **extra})
    with open(os.environ["RECORD"], "a") as out:
        out.write(line + "\n")

def on_signal(signum, frame):
    record(signal.Signals(signum).name)
    if signum != signal.SIGHUP:
        sys.exit(int(os.environ.get("EXIT_ON_SIGNAL", "0")))

args = sys.argv[1:]
if "--exit" in args:
    record("start")
    sys.exit(int(args[args.index("--exit") + 1]))
if "--handle-signals" in args:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
if "--ignore-term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
extra = {}
if "--grandchild" in args:
    extra["grandchild"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]).pid
record("start", **extra)
while True:
    time.sleep(0.05)
"""


class Trees:
    """A gitsync-like layout: <root>/.worktrees/<sha>/ and a relative <root>/<name> link."""

    def __init__(self, root: Path, name: str = "app"):
        self.root = root
        self.link = root / name

    def make(self, message: str = "hello") -> str:
        sha = os.urandom(20).hex()
        tree = self.root / ".worktrees" / sha
        tree.mkdir(parents=True)
        (tree / "message.txt").write_text(message + "\n")
        return sha

    def tree(self, sha: str) -> str:
        return os.path.realpath(self.root / ".worktrees" / sha)

    def flip(self, sha: str) -> None:
        """Publish like the sidecar: a temporary relative link renamed over the link."""
        temp = self.root / f".{self.link.name}.tmp-{os.urandom(4).hex()}"
        os.symlink(f".worktrees/{sha}", temp)
        os.replace(temp, self.link)

    def remove(self, sha: str) -> None:
        shutil.rmtree(self.root / ".worktrees" / sha)


class Reloader:
    """One running gitsync-reload, its log and the records its commands wrote."""

    def __init__(self, process: subprocess.Popen, log: Path, record: Path):
        self.process = process
        self.log_path = log
        self.record_path = record

    def log(self) -> str:
        return self.log_path.read_text()

    def records(self, event: str | None = None) -> list[dict]:
        if not self.record_path.exists():
            return []
        lines = [json.loads(line) for line in self.record_path.read_text().splitlines() if line.endswith("}")]
        return [line for line in lines if event is None or line["event"] == event]

    def starts(self) -> list[dict]:
        return self.records("start")

    def start_count(self) -> int:
        """Starts as gitsync-reload logged them: counts even a command killed before it recorded."""
        return self.log().count("started pid")

    def wait_starts(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[dict]:
        return wait_for(lambda: len(self.starts()) >= count and self.starts(), f"{count} starts", timeout, self)

    def wait_log(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        wait_for(lambda: text in self.log(), repr(text), timeout, self)

    def send(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def exit_code(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)


def wait_for(predicate, what: str, timeout: float = DEFAULT_TIMEOUT, reloader: Reloader | None = None):
    """support.waiting.wait_for, showing gitsync-reload's log when it fails."""
    detail = (lambda: f"--- gitsync-reload log ---\n{reloader.log()}") if reloader else None
    return waiting.wait_for(predicate, timeout, what, detail=detail)


@pytest.fixture
def trees(tmp_path) -> Trees:
    root = tmp_path / "root"
    root.mkdir()
    return Trees(root)


@pytest.fixture
def child_script(tmp_path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


@pytest.fixture
def start_reload(tmp_path, child_script):
    """Start gitsync-reload (its own session); kill every group it or its commands made."""
    started: list[Reloader] = []

    def start(*options: str, args: tuple[str, ...] = (), env: dict | None = None, command=None) -> Reloader:
        index = len(started)
        log, record = tmp_path / f"reload-{index}.log", tmp_path / f"record-{index}.jsonl"
        command = command or [sys.executable, str(child_script), *args]
        # A free port for the status API unless the test names one: tests run side by side.
        environ = {**os.environ, "RECORD": str(record), "GITSYNC_RELOAD_STATUS_BIND": "127.0.0.1:0", **(env or {})}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "gitsync.reload", *options, "--", *command],
                cwd=tmp_path, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        started.append(Reloader(process, log, record))
        return started[-1]

    yield start
    for reloader in started:
        if reloader.process.poll() is None:
            reloader.send(signal.SIGTERM)  # its own clean shutdown first...
            try:
                reloader.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        kill_group(reloader.process.pid)  # ...then nothing of it or its commands survives
        reloader.process.wait(timeout=10)
        for pid in re.findall(r"started pid (\d+)", reloader.log()):
            kill_group(int(pid))


# --- the settings -------------------------------------------------------------------------------


def test_config_defaults_and_command():
    config = build_config(["--link", "root/app", "--", "python", "app.py", "--port", "1"], {})
    assert config.link == os.path.abspath("root/app")
    assert config.command == ("python", "app.py", "--port", "1")
    assert (config.signal, config.grace, config.debounce, config.signal_only) == (signal.SIGTERM, 10.0, 0.05, False)
    assert (config.listen, config.ready_timeout) == (None, 10.0)


@pytest.mark.parametrize(
    "text, address",
    [("127.0.0.1:8000", ("127.0.0.1", 8000)), (":8000", ("0.0.0.0", 8000)), ("[::1]:0", ("::1", 0)), ("", None)],
)
def test_config_listen_address(text, address):
    assert build_config(["--link", "a", "--listen", text, "--", "x"], {}).listen == address
    from_env = build_config(["--link", "a", "--", "x"], {"GITSYNC_RELOAD_LISTEN": text, "GITSYNC_RELOAD_READY_TIMEOUT": "2s"})
    assert (from_env.listen, from_env.ready_timeout) == (address, 2.0)


def test_config_from_environment_and_flags_win():
    env = {
        "GITSYNC_RELOAD_LINK": "/env/app",
        "GITSYNC_RELOAD_SIGNAL": "INT",
        "GITSYNC_RELOAD_GRACE": "2s",
        "GITSYNC_RELOAD_DEBOUNCE": "200ms",
        "GITSYNC_RELOAD_SIGNAL_ONLY": "true",
    }
    from_env = build_config(["--", "cmd"], env)
    assert (from_env.link, from_env.signal, from_env.grace, from_env.debounce, from_env.signal_only) == (
        "/env/app", signal.SIGINT, 2.0, 0.2, True,
    )
    flags = ["--link", "/flag/app", "--signal", "HUP", "--grace", "1s", "--debounce", "0", "--no-signal-only"]
    from_flags = build_config([*flags, "--", "cmd"], env)
    assert (from_flags.link, from_flags.signal, from_flags.grace, from_flags.debounce, from_flags.signal_only) == (
        "/flag/app", signal.SIGHUP, 1.0, 0.0, False,
    )
    assert from_flags.environ["GITSYNC_RELOAD_LINK"] == "/env/app"  # the command's environment is passed on


@pytest.mark.parametrize("text", ["TERM", "SIGTERM", "term", "15"])
def test_config_signal_spellings(text):
    assert build_config(["--link", "a", "--signal", text, "--", "x"], {}).signal == signal.SIGTERM


def test_config_signal_only_defaults_to_hup():
    assert build_config(["--link", "a", "--signal-only", "--", "x"], {}).signal == signal.SIGHUP


@pytest.mark.parametrize(
    "argv, env, named",
    [
        (["--", "x"], {}, "--link"),
        (["--link", "a"], {}, "CMD"),
        (["--link", "a", "--grace", "soon", "--", "x"], {}, "--grace"),
        (["--link", "a", "--debounce=-1s", "--", "x"], {}, "--debounce"),
        (["--link", "a", "--signal", "SIGNOPE", "--", "x"], {}, "--signal"),
        (["--link", "a", "--bogus", "--", "x"], {}, "--bogus"),
        (["--link", "a", "--", "x"], {"GITSYNC_RELOAD_GRACE": "1y"}, "GITSYNC_RELOAD_GRACE"),
        (["--link", "a", "--", "x"], {"GITSYNC_RELOAD_SIGNAL_ONLY": "maybe"}, "--signal-only"),
        (["--link", "a", "--listen", "8000", "--", "x"], {}, "--listen"),
        (["--link", "a", "--listen", "localhost:http", "--", "x"], {}, "--listen"),
        (["--link", "a", "--listen", "127.0.0.1:65536", "--", "x"], {}, "--listen"),
        (["--link", "a", "--", "x"], {"GITSYNC_RELOAD_LISTEN": "nohost"}, "GITSYNC_RELOAD_LISTEN"),
        (["--link", "a", "--ready-timeout", "soon", "--", "x"], {}, "--ready-timeout"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path, argv, env, named):
    with pytest.raises(ConfigError, match=named):
        build_config(argv, env)
    assert named in refused_line(tmp_path, argv, env)


def refused_line(cwd: Path, argv: list[str], env: dict[str, str]) -> str:
    """Run gitsync-reload with bad settings: it must exit 2 with one line on stderr; that line."""
    result = subprocess.run(
        [sys.executable, "-m", "gitsync.reload", *argv],
        env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gitsync-reload: error:"), result.stderr
    return lines[0]


# --- running the command ------------------------------------------------------------------------


def test_starts_in_link_target_with_hash_in_own_group(trees, start_reload):
    sha = trees.make()
    trees.flip(sha)
    reloader = start_reload("--link", str(trees.link))
    [start] = reloader.wait_starts(1)
    assert start["cwd"] == trees.tree(sha)
    assert start["hash"] == sha
    assert start["pgid"] == start["pid"] != os.getpgid(0)
    assert start["listen_fds"] is None  # no socket hand-off without --listen
    assert f"started pid {start['pid']}" in reloader.log()


def test_flip_restarts_in_new_tree_with_the_chosen_signal(trees, start_reload):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    reloader = start_reload("--link", str(trees.link), "--signal", "INT", args=("--handle-signals",))
    [old] = reloader.wait_starts(1)
    trees.flip(second)
    new = reloader.wait_starts(2)[1]
    assert (new["cwd"], new["hash"]) == (trees.tree(second), second)
    assert [r["event"] for r in reloader.records() if r["pid"] == old["pid"]] == ["start", "SIGINT"]
    assert gone(old["pid"])
    assert f"link moved to {second}" in reloader.log()


def test_burst_of_flips_restarts_once_onto_newest(trees, start_reload):
    shas = [trees.make() for _ in range(6)]
    trees.flip(shas[0])
    reloader = start_reload("--link", str(trees.link), "--debounce", "600ms")
    reloader.wait_starts(1)
    for sha in shas[1:]:  # five flips, 50ms apart: one burst for a 600ms debounce
        trees.flip(sha)
        time.sleep(0.05)
    second = reloader.wait_starts(2)[1]
    assert second["hash"] == shas[-1]
    assert stays(lambda: reloader.start_count() == 2, 1.0), reloader.log()


def test_cleanup_and_unrelated_changes_do_not_restart(trees, start_reload):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    reloader = start_reload("--link", str(trees.link))
    reloader.wait_starts(1)
    trees.flip(second)
    reloader.wait_starts(2)

    trees.remove(first)  # the sidecar's clean-up of the old tree
    third = trees.make()  # a checkout of the next commit, not published yet
    (trees.root / "unrelated.txt").write_text("x")
    (trees.root / ".worktrees" / second / "message.txt").write_text("edited in place")
    stray = trees.root / ".app.tmp-stray"
    os.symlink(f".worktrees/{third}", stray)  # a temporary link that is never renamed
    stray.unlink()
    trees.flip(second)  # a new link with the same target
    assert stays(lambda: reloader.start_count() == 2, 1.0), reloader.log()

    trees.flip(third)
    starts = reloader.wait_starts(3)
    assert [s["hash"] for s in starts] == [first, second, third]


def test_crash_restarts_with_growing_delay_and_flip_cuts_the_wait(trees, start_reload):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    reloader = start_reload("--link", str(trees.link), args=("--exit", "3"))
    starts = reloader.wait_starts(3)
    gaps = [b["time"] - a["time"] for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95, gaps  # waited 0.5s, then 1s
    assert "exited with status 3" in reloader.log()
    assert "starting it again in 500ms" in reloader.log() and "starting it again in 1s" in reloader.log()

    reloader.wait_log("starting it again in 2s")
    flipped = time.time()
    trees.flip(second)
    fourth = reloader.wait_starts(4)[3]
    assert fourth["hash"] == second
    assert fourth["time"] - flipped < 1.5  # before the 2s back-off was over


@pytest.mark.parametrize(
    "signum, child_exit, expected",
    [
        (signal.SIGTERM, "7", 7),  # the command handles SIGTERM and exits 7
        (signal.SIGINT, None, 128 + signal.SIGTERM),  # the command dies of the SIGTERM it is sent
    ],
)
def test_shutdown_stops_group_and_exits_with_child_status(trees, start_reload, signum, child_exit, expected):
    sha = trees.make()
    trees.flip(sha)
    args = ("--grandchild", "--handle-signals") if child_exit else ("--grandchild",)
    env = {"EXIT_ON_SIGNAL": child_exit} if child_exit else {}
    reloader = start_reload("--link", str(trees.link), args=args, env=env)
    [start] = reloader.wait_starts(1)
    assert alive(start["grandchild"])
    reloader.send(signum)
    assert reloader.exit_code() == expected
    assert gone(start["pid"])
    wait_for(lambda: gone(start["grandchild"]), "the grandchild to be gone and reaped", 5)
    assert "shutting down" in reloader.log()


def test_grace_then_sigkill_for_child_ignoring_sigterm(trees, start_reload):
    sha = trees.make()
    trees.flip(sha)
    reloader = start_reload("--link", str(trees.link), "--grace", "500ms", args=("--ignore-term",))
    [start] = reloader.wait_starts(1)
    sent = time.monotonic()
    reloader.send(signal.SIGTERM)
    assert reloader.exit_code() == 128 + signal.SIGKILL
    assert 0.5 <= time.monotonic() - sent < 5
    assert gone(start["pid"])
    assert "sending SIGKILL" in reloader.log()


def test_grandchild_is_stopped_on_restart(trees, start_reload):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    reloader = start_reload("--link", str(trees.link), args=("--grandchild",))
    [old] = reloader.wait_starts(1)
    assert alive(old["grandchild"])
    trees.flip(second)
    reloader.wait_starts(2)
    assert gone(old["pid"])
    wait_for(lambda: gone(old["grandchild"]), "the old grandchild to be gone and reaped", 5)


def test_waits_for_missing_directory_and_link(tmp_path, start_reload):
    trees = Trees(tmp_path / "later" / "root")
    reloader = start_reload("--link", str(trees.link))
    reloader.wait_log(f"waiting for {trees.link} to appear")
    trees.root.mkdir(parents=True)
    sha = trees.make()
    assert stays(lambda: not reloader.starts(), 0.3)
    trees.flip(sha)
    [start] = reloader.wait_starts(1)
    assert (start["cwd"], start["hash"]) == (trees.tree(sha), sha)


def test_signal_only_sends_hup_to_the_command_and_does_not_restart(trees, start_reload):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    args = ("--handle-signals", "--grandchild")
    reloader = start_reload("--link", str(trees.link), "--signal-only", "--signal", "HUP", args=args)
    [start] = reloader.wait_starts(1)
    trees.flip(second)
    wait_for(lambda: reloader.records("SIGHUP"), "SIGHUP", reloader=reloader)
    assert stays(lambda: reloader.start_count() == 1, 0.5), reloader.log()
    assert reloader.records("SIGHUP")[0]["pid"] == start["pid"]
    assert alive(start["grandchild"])  # a server's workers hear it from their master, not from us
    reloader.send(signal.SIGTERM)  # shutting down still stops it with SIGTERM
    assert reloader.exit_code() == 0
    assert [r["event"] for r in reloader.records()] == ["start", "SIGHUP", "SIGTERM"]


# --- --listen: one socket, handed to each command ------------------------------------------------


# A server for the hand-off tests: serves on fd 3, says READY=1 after START_DELAY, records
# what it got, and on SIGINT/SIGTERM stops accepting and finishes the requests in flight.
LISTEN_APP = r"""
import json, os, signal, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def record(event, **extra):
    line = json.dumps({"event": event, "pid": os.getpid(), "hash": os.environ.get("GITSYNC_HASH"),
                       "time": time.time(), **extra})
    with open(os.environ["RECORD"], "a") as out:
        out.write(line + "\n")

if os.path.exists("broken"):  # a tree whose app dies before it serves
    record("start")
    sys.exit(3)
sock = socket.socket(fileno=3)
record("start", listen_fds=os.environ.get("LISTEN_FDS"), listen_pid=os.environ.get("LISTEN_PID"),
       address=list(sock.getsockname()[:2]),
       listening=sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
sock.setblocking(False)  # shared with the other app for a moment: a lost accept race must not block

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(float(os.environ.get("SLOW", "1")))
        body = json.dumps({"pid": os.getpid(), "hash": os.environ.get("GITSYNC_HASH")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/slow":
            record("served slow")

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
server.daemon_threads = False  # so server_close() waits for the requests in flight
stop = threading.Event()

def on_signal(signum, frame):
    record(signal.Signals(signum).name)
    stop.set()

for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, on_signal)
time.sleep(float(os.environ.get("START_DELAY", "0")))
threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
record("ready")
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
stop.wait()
server.shutdown()
server.server_close()
record("exit")
"""


@pytest.fixture
def listen_app(tmp_path) -> Path:
    path = tmp_path / "listen_app.py"
    path.write_text(LISTEN_APP)
    return path


def fetch(port: int, path: str = "/") -> dict:
    """One GET on a fresh connection: the JSON body, or what went wrong."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return {"error": f"HTTP {response.status}"}
        return json.loads(body)
    except (OSError, http.client.HTTPException) as error:
        return {"error": type(error).__name__}
    finally:
        connection.close()


class RequestLoop(threading.Thread):
    """GET / every 10 ms on fresh connections until stopped, at most `limit` times; counts outcomes.

    `finish()` stops it only once `at_least` requests have run, so the count does not
    depend on how fast a busy machine ran them.
    """

    AT_LEAST = 51

    def __init__(self, port: int, limit: int = 800):
        super().__init__(daemon=True)
        self.port, self.limit = port, limit
        self.halt = threading.Event()
        self.outcomes: collections.Counter = collections.Counter()
        self.last: dict = {}

    def run(self) -> None:
        for _ in range(self.limit):
            if self.halt.is_set():
                return
            self.last = fetch(self.port)
            self.outcomes[self.last.get("error", "ok")] += 1
            time.sleep(0.01)

    def finish(self) -> collections.Counter:
        wait_for(lambda: sum(self.outcomes.values()) >= self.AT_LEAST or not self.is_alive(),
                 f"{self.AT_LEAST} requests")
        self.halt.set()
        self.join(timeout=30)
        return self.outcomes


def start_listening(start_reload, trees: Trees, app: Path, *options: str, env: dict | None = None):
    port = free_port()
    reloader = start_reload(
        "--link", str(trees.link), "--listen", f"127.0.0.1:{port}", "--signal", "INT", *options,
        command=[sys.executable, str(app)], env=env,
    )
    wait_for(lambda: reloader.records("ready"), "the first app to be ready", reloader=reloader)
    return reloader, port


def event_of(reloader: Reloader, pid: int, event: str) -> dict:
    [found] = [r for r in reloader.records(event) if r["pid"] == pid]
    return found


@pytest.mark.parametrize(
    "shim", [SH_SHIM, PYTHON_SHIM], ids=["sh", "python"],
)
def test_exec_shim_sets_listen_pid_to_the_command_own_pid(shim):
    probe = "import os; print(os.environ['LISTEN_PID'] == str(os.getpid()), os.getppid())"
    result = subprocess.run([*shim, sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["True", str(os.getpid())], result.stderr  # exec'd in place, no extra process
    missing = subprocess.run([*shim, "no-such-command-gitsync"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127
    assert len(missing.stderr.strip().splitlines()) == 1 and "no-such-command-gitsync" in missing.stderr


def test_listen_hands_the_socket_to_the_command_as_fd_3(trees, start_reload, listen_app):
    sha = trees.make()
    trees.flip(sha)
    reloader, port = start_listening(start_reload, trees, listen_app)
    [start] = reloader.starts()
    assert start["listen_fds"] == "1" and start["listen_pid"] == str(start["pid"])
    assert start["address"] == ["127.0.0.1", port] and start["listening"] == 1
    assert fetch(port) == {"pid": start["pid"], "hash": sha}
    assert f"listening on 127.0.0.1:{port}" in reloader.log()
    reloader.wait_log(f"pid {start['pid']} is ready")  # its READY=1 arrived


def test_listen_busy_port_exits_1_with_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gitsync.reload", "--link", str(tmp_path / "app"),
             "--listen", f"127.0.0.1:{port}", "--", "true"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--listen 127.0.0.1:{port}" in lines[0], result.stderr


def test_listen_new_command_is_ready_before_the_old_one_stops_and_drains(trees, start_reload, listen_app):
    first, second = trees.make(), trees.make()
    trees.flip(first)
    reloader, port = start_listening(start_reload, trees, listen_app, env={"START_DELAY": "0.3", "SLOW": "1"})
    [old] = reloader.starts()
    slow: dict = {}
    request = threading.Thread(target=lambda: slow.update(fetch(port, "/slow")))
    request.start()  # only the old app runs: the request is in its hands
    time.sleep(0.1)
    trees.flip(second)
    new = reloader.wait_starts(2)[1]
    wait_for(lambda: reloader.records("exit"), "the old app to exit", reloader=reloader)
    request.join(timeout=10)

    assert new["hash"] == second and new["listen_pid"] == str(new["pid"])
    new_ready, old_signal = event_of(reloader, new["pid"], "ready"), event_of(reloader, old["pid"], "SIGINT")
    assert new_ready["time"] < old_signal["time"]  # the old one was told to stop only once the new one served
    # It was signalled with the request in hand, finished it, and only then exited.
    assert old_signal["time"] < event_of(reloader, old["pid"], "served slow")["time"]
    assert slow == {"pid": old["pid"], "hash": first}
    assert event_of(reloader, old["pid"], "served slow")["time"] <= event_of(reloader, old["pid"], "exit")["time"]
    assert fetch(port) == {"pid": new["pid"], "hash": second}
    wait_for(lambda: gone(old["pid"]), "the old app to be reaped", reloader=reloader)
    assert alive(new["pid"])


def test_listen_new_command_that_dies_leaves_the_old_one_serving(trees, start_reload, listen_app):
    good, broken, fixed = trees.make(), trees.make(), trees.make()
    (trees.root / ".worktrees" / broken / "broken").write_text("")
    trees.flip(good)
    reloader, port = start_listening(start_reload, trees, listen_app)
    [old] = reloader.starts()
    trees.flip(broken)
    reloader.wait_log("before it was ready")
    assert f"pid {old['pid']} ({good}) goes on serving" in reloader.log()
    assert "starting it again in 500ms" in reloader.log()
    assert fetch(port) == {"pid": old["pid"], "hash": good}
    trees.flip(fixed)  # a publish cuts the back-off wait short
    wait_for(lambda: fetch(port).get("hash") == fixed, "the fixed tree to serve", reloader=reloader)
    wait_for(lambda: gone(old["pid"]), "the old app to be gone", reloader=reloader)


def test_listen_burst_of_flips_under_requests_refuses_no_connection(trees, start_reload, listen_app):
    shas = [trees.make() for _ in range(6)]
    trees.flip(shas[0])
    reloader, port = start_listening(start_reload, trees, listen_app, env={"START_DELAY": "0.15"})
    requests = RequestLoop(port)
    requests.start()
    try:
        for sha in shas[1:]:  # some flips land while the previous new app is still starting
            time.sleep(0.2)
            trees.flip(sha)
        wait_for(lambda: requests.last.get("hash") == shas[-1], "the newest tree to serve", reloader=reloader)
        time.sleep(0.2)
    finally:
        outcomes = requests.finish()
    assert outcomes["ok"] > 50 and set(outcomes) == {"ok"}, outcomes  # nothing refused, reset or lost
    assert "was not ready yet" in reloader.log() or reloader.log().count("is ready; stopping") >= 2
    last = reloader.starts()[-1]
    wait_for(lambda: all(gone(s["pid"]) for s in reloader.starts()[:-1]), "the replaced apps to end", reloader=reloader)
    assert last["hash"] == shas[-1] and alive(last["pid"])


# --- the watcher recipe in docs/reload.md -------------------------------------------------------


START_APP = """#!/bin/sh
# /usr/local/bin/start-app: run the app in the tree the link points at now
cd {link} || exit 1
export GITSYNC_HASH="$(basename "$(pwd -P)")"
exec {python} {app}
"""


def test_the_watcher_recipe_in_the_docs_is_the_one_tested():
    recipe = (REPO / "docs" / "reload.md").read_text()
    assert START_APP.format(link="/repo/app", python="python", app="app.py") in recipe
    assert "watchfiles --target-type command --non-recursive /usr/local/bin/start-app /repo" in recipe


def test_watchfiles_cli_recipe_restarts_onto_new_tree(trees, tmp_path, child_script):
    """docs/reload.md, your own file watcher: `watchfiles --non-recursive` on the link's directory, a start script entering the link."""
    first, second = trees.make(), trees.make()
    trees.flip(first)
    start_app = tmp_path / "start-app"
    start_app.write_text(START_APP.format(link=trees.link, python=sys.executable, app=child_script))
    start_app.chmod(0o755)
    record, log = tmp_path / "record.jsonl", tmp_path / "watchfiles.log"
    command = [str(WATCHFILES), "--target-type", "command", "--non-recursive", str(start_app), str(trees.root)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=trees.root, env={**os.environ, "RECORD": str(record)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    reloader = Reloader(process, log, record)
    try:
        reloader.wait_starts(1)
        trees.flip(second)
        new = reloader.wait_starts(2)[1]
        assert (new["cwd"], new["hash"]) == (trees.tree(second), second)
        trees.remove(first)  # clean-up and checkouts happen inside .worktrees, which is not watched
        trees.make()
        assert stays(lambda: len(reloader.starts()) == 2, 1.0), reloader.log()
    finally:
        kill_group(process.pid)
        process.wait(timeout=10)


# --- the demo app ---------------------------------------------------------------------------------


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


def served(url: str) -> dict | None:
    """The demo app's commit and message (its /version also says what the sidecar reports)."""
    data = get_json(url)
    return {key: data.get(key) for key in ("commit", "message")} if isinstance(data, dict) else None


@pytest.mark.parametrize("listen", [False, True], ids=["own-port", "listen"])
def test_demo_app_serves_each_published_tree(trees, start_reload, listen):
    first, second = trees.make("Hello, first"), trees.make("Hello, second")
    trees.flip(first)
    port = free_port()
    app = str(REPO / "demo-app" / "app.py")
    handoff = ("--listen", f"127.0.0.1:{port}") if listen else ()
    reloader = start_reload(
        "--link", str(trees.link), "--signal", "INT", "--grace", "5s", *handoff,
        command=[sys.executable, app], env={"PORT": "1" if listen else str(port)},  # with --listen PORT is unused
    )
    url = f"http://127.0.0.1:{port}/version"
    assert wait_for(lambda: served(url), "the demo app", 20, reloader) == {"commit": first, "message": "Hello, first"}
    trees.flip(second)
    # One answer with both: with --listen the two apps may take turns for a moment.
    wait_for(lambda: served(url) == {"commit": second, "message": "Hello, second"}, "the second commit", 20, reloader)
    if listen:  # it served on the socket it was handed and said READY=1, which stopped the old one
        reloader.wait_log("is ready; stopping pid")
