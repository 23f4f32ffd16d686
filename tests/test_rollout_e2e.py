"""Rollouts end to end, with real processes only: gitsync syncing a real remote under
tmp_path, gitsync-reload running a small stdlib HTTP app from the published tree (and
serving its own status API), and the app answering every request from a file of that
tree. A user checks what is asserted here: the app keeps answering, the sidecar's
/api/v1/status says what is live, what was rolled back and why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.ports import free_port
from support.processes import start_group, stop_group
from support.repos import Remote
from support.waiting import wait_for

TOKEN = "e2e-token-5f1c9a"
ROLLOUT_TIMEOUT = "20s"
WAIT = 60   # generous: a loaded machine only makes these slower

# The app under test: stdlib only. It answers each GET with msg.txt as it is in the tree
# it runs in (read per request), on fd 3 when handed a socket, else on $PORT, and says
# READY=1 once serving; on SIGTERM it finishes the requests in flight. SLOW, if present,
# is how long it takes to start. X-Gitsync-Hash names the commit it runs (its tree is
# named for it), so a health URL pins the commit.
APP = '''\
import os, signal, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.path.exists("SLOW"):
    time.sleep(float(open("SLOW").read()))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("msg.txt", "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Gitsync-Hash", os.path.basename(os.getcwd()))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if os.environ.get("LISTEN_PID") == str(os.getpid()):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)
else:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
# On SIGTERM: stop accepting, finish the requests in flight (server_close joins them).
server.daemon_threads = False
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
if os.environ.get("NOTIFY_SOCKET"):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
server.serve_forever()
server.server_close()
'''
BROKEN = APP.replace("class Handler(BaseHTTPRequestHandler):", "class Handler(BaseHTTPRequestHandler:")
BIN = Path(sys.executable).parent


def request(url: str, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=b"" if method == "POST" else None)
    try:
        with opener.open(req, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def json_or_none(url: str) -> dict | None:
    try:
        code, body = request(url)
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


@dataclass
class Stack:
    """gitsync and the app (under gitsync-reload, or plain restarts), stopped at the end."""

    tmp: Path
    remote: Remote
    reload: bool = True
    api_port: int = field(default_factory=free_port)
    app_port: int = field(default_factory=free_port)
    reload_port: int = field(default_factory=free_port)
    procs: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def app(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/"

    def start_sidecar(self) -> None:
        token = self.tmp / "token"
        token.write_text(TOKEN)
        probe = (["--app-status-url", f"http://127.0.0.1:{self.reload_port}/api/v1/status"]
                 if self.reload else ["--app-health-url", self.app])
        self.procs["gitsync"] = start_group(
            [str(BIN / "gitsync"), "--repo", self.remote.url, "--root", str(self.root),
             "--link", "app", "--period", "1s", "--http-bind", f"127.0.0.1:{self.api_port}",
             "--api-token-file", str(token), "--rollout-timeout", ROLLOUT_TIMEOUT, *probe],
            stdout=self.log("gitsync"), stderr=subprocess.STDOUT)

    def start_app(self) -> None:
        if self.reload:
            argv = [str(BIN / "gitsync-reload"), "--link", str(self.root / "app"),
                    "--listen", f"127.0.0.1:{self.app_port}",
                    "--status-bind", f"127.0.0.1:{self.reload_port}", "--report-output",
                    "--grace", "5s", "--", sys.executable, "app.py"]
            self.procs["app"] = start_group(argv, stdout=self.log("app"), stderr=subprocess.STDOUT)
        else:
            self.restart_plain_app()

    def restart_plain_app(self) -> None:
        """What a supervisor without gitsync-reload does: run the app in the link's tree."""
        if "app" in self.procs:
            stop_group(self.procs.pop("app"))
        tree = os.path.realpath(self.root / "app")
        self.procs["app"] = start_group([sys.executable, "app.py"], cwd=tree,
                                        env={**os.environ, "PORT": str(self.app_port)},
                                        stdout=self.log("app"), stderr=subprocess.STDOUT)

    def log(self, name: str):
        return open(self.tmp / f"{name}.log", "ab")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.tmp.glob("*.log")))

    def status(self) -> dict:
        return json_or_none(f"{self.api}/api/v1/status") or {}

    def wait_rollout(self, commit: str, state: str, timeout: float = WAIT) -> dict:
        def reached():
            now = self.status()
            return now if (now.get("rollout") or {}).get("commit") == commit and \
                now["rollout"]["state"] == state else None
        return wait_for(reached, timeout, f"rollout of {commit[:7]} to be {state}", interval=0.2,
                        detail=lambda: f"{self.status()}\n{self.logs()}")

    def wait_live(self, commit: str, body: bytes | None = None) -> dict:
        now = wait_for(lambda: (s := self.status()).get("live_commit") == commit and s,
                       WAIT, f"{commit[:7]} live", interval=0.2,
                       detail=lambda: f"{self.status()}\n{self.logs()}")
        if body is not None:
            wait_for(lambda: json_or_none_body(self.app) == body, WAIT, f"the app to serve {body!r}")
        return now

    def stop(self) -> None:
        for name in ("app", "gitsync"):
            if name in self.procs:
                stop_group(self.procs.pop(name))


def json_or_none_body(url: str) -> bytes | None:
    try:
        code, body = request(url)
    except OSError:
        return None
    return body if code == 200 else None


class Reader(threading.Thread):
    """GETs the app in a loop, as users would; counts the requests that did not get a 200."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.ok, self.failed, self.bodies = url, 0, [], set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                code, body = request(self.url)
            except OSError as error:
                self.failed.append(repr(error))
                continue
            if code == 200:
                self.ok += 1
                self.bodies.add(body)
            else:
                self.failed.append(code)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


@pytest.fixture
def stack_for(tmp_path):
    """stack_for(reload=True): the remote holding the app, gitsync and the app running,
    the first commit live."""
    made = []

    def make(reload: bool = True) -> tuple[Stack, str]:
        remote = Remote(tmp_path)
        first = remote.commit_and_push({"app.py": APP, "msg.txt": "one"}, "first")
        stack = Stack(tmp_path, remote, reload=reload)
        made.append(stack)
        stack.start_sidecar()
        wait_for(lambda: (stack.root / "app").exists(), WAIT, "the first publish",
                 detail=stack.logs)
        stack.start_app()
        stack.wait_live(first, b"one")
        return stack, first

    yield make
    for stack in made:
        stack.stop()


def test_good_bad_fix_with_a_reader_that_never_fails(stack_for):
    stack, first = stack_for()
    reader = Reader(stack.app)
    reader.start()
    try:
        good = stack.remote.commit_and_push({"msg.txt": "two"}, "good")
        stack.wait_live(good, b"two")

        bad = stack.remote.commit_and_push({"app.py": BROKEN, "msg.txt": "three"}, "syntax error")
        shown = stack.wait_rollout(bad, "rolled_back")
        assert shown["live_commit"] == good
        assert "SyntaxError" in shown["rollout"]["reason"]
        assert [row["commit"] for row in shown["bad_commits"]] == [bad]
        assert "SyntaxError" in shown["bad_commits"][0]["reason"]
        assert os.path.basename(os.readlink(stack.root / "app")) == good
        page = request(f"{stack.api}/")[1].decode()
        assert bad[:7] in page and "SyntaxError" in page and "rolled back" in page

        fix = stack.remote.commit_and_push({"app.py": APP, "msg.txt": "four"}, "fix")
        shown = stack.wait_live(fix, b"four")
        assert shown["rollout"]["state"] == "live"
    finally:
        reader.stop()
    assert reader.failed == [] and reader.ok > 0
    assert b"three" not in reader.bodies   # the broken commit never served


def test_a_push_during_a_rollout_supersedes_it(stack_for):
    stack, first = stack_for()
    slow = stack.remote.commit_and_push({"SLOW": "4", "msg.txt": "slow"}, "slow start")
    stack.wait_rollout(slow, "pending")
    newer = stack.remote.commit_and_push({"SLOW": None, "msg.txt": "newer"}, "newer")
    shown = stack.wait_live(newer, b"newer")
    assert shown["rollout"]["state"] == "live"
    wait_for(lambda: {r["commit"]: (r.get("rollout") or {}).get("result")
                      for r in stack.status()["history"]}.get(slow) == "superseded",
             WAIT, "the slow one superseded", detail=lambda: str(stack.status()["history"]))
    assert slow not in [row["commit"] for row in stack.status()["bad_commits"]]


def test_a_sidecar_killed_mid_rollout_resumes_it_after_a_restart(stack_for):
    stack, first = stack_for()
    slow = stack.remote.commit_and_push({"SLOW": "5", "msg.txt": "slow"}, "slow start")
    stack.wait_rollout(slow, "pending")
    sidecar = stack.procs.pop("gitsync")
    sidecar.send_signal(signal.SIGKILL)
    stop_group(sidecar)
    stack.start_sidecar()
    shown = stack.wait_live(slow, b"slow")
    assert shown["rollout"]["state"] == "live" and shown["bad_commits"] == []


def test_pause_resume_and_retry_need_the_token(stack_for):
    stack, first = stack_for()
    for path in ("pause", "resume", "retry"):
        assert request(f"{stack.api}/api/v1/{path}", "POST")[0] == 401
        assert request(f"{stack.api}/api/v1/{path}", "POST", token="wrong")[0] == 401

    assert request(f"{stack.api}/api/v1/pause", "POST", token=TOKEN)[0] == 200
    held = stack.remote.commit_and_push({"msg.txt": "held"}, "held back")
    wait_for(lambda: stack.status().get("paused") is True, WAIT, "paused in the status")
    # Syncs still fetch while paused, and publish nothing.
    count = stack.status()["sync_count"]
    wait_for(lambda: stack.status()["sync_count"] >= count + 2, WAIT, "two more syncs")
    assert stack.status()["live_commit"] == first
    assert json_or_none_body(stack.app) == b"one"
    assert request(f"{stack.api}/api/v1/resume", "POST", token=TOKEN)[0] == 200
    stack.wait_live(held, b"held")

    # A bad commit is not published again until retried; a retry rolls it out afresh.
    bad = stack.remote.commit_and_push({"app.py": BROKEN}, "broken")
    before = stack.wait_rollout(bad, "rolled_back")["rollout"]["started_at"]
    code, body = request(f"{stack.api}/api/v1/retry", "POST", token=TOKEN)
    assert code == 202 and json.loads(body)["result"] == "sync started"
    wait_for(lambda: (stack.status().get("rollout") or {}).get("started_at") != before,
             WAIT, "a new rollout of the retried commit")
    stack.wait_rollout(bad, "rolled_back")
    assert stack.status()["live_commit"] == held


def test_an_app_without_gitsync_reload_is_followed_through_its_health_url(stack_for):
    stack, first = stack_for(reload=False)
    bad = stack.remote.commit_and_push({"app.py": BROKEN, "msg.txt": "bad"}, "broken")
    wait_for(lambda: os.path.basename(os.readlink(stack.root / "app")) == bad, WAIT, "the publish")
    stack.restart_plain_app()   # it dies at once: a SyntaxError
    shown = stack.wait_rollout(bad, "rolled_back")
    assert shown["live_commit"] == first
    assert [row["commit"] for row in shown["bad_commits"]] == [bad]
    assert os.path.basename(os.readlink(stack.root / "app")) == first
    stack.restart_plain_app()   # the supervisor follows the link back
    assert json_or_none_body(stack.app) in (None, b"one")
    wait_for(lambda: json_or_none_body(stack.app) == b"one", WAIT, "the old commit serving")

    fix = stack.remote.commit_and_push({"app.py": APP, "msg.txt": "fixed"}, "fix")
    wait_for(lambda: os.path.basename(os.readlink(stack.root / "app")) == fix, WAIT, "the fix published")
    stack.restart_plain_app()
    stack.wait_live(fix, b"fixed")
