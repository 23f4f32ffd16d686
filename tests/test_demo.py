"""`make demo` (demo-app/run_demo.py): push to the demo's remote and the demo app serves it.

The end-to-end test runs the script as a person would (stdin closed, its own process
group, Ctrl-C as SIGINT to that group), with everything under tmp_path through
DEMO_DIR. The smaller tests drive the remote and its post-receive hook directly.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.processes import signal_group, start_group, stop_group
from support.repos import git
from support.waiting import wait_for

from webhook.forges import parse_delivery

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_DEMO = REPO_ROOT / "demo-app" / "run_demo.py"
READY_TIMEOUT = 60
STOP_TIMEOUT = 15
READY_PATTERNS = {
    "app": re.compile(r"^app: (http://127\.0\.0\.1:\d+/)$"),
    "status": re.compile(r"^status: (http://127\.0\.0\.1:\d+/)$"),
    "remote": re.compile(r"^remote: (/.+)$"),
}


def load_run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", RUN_DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_demo", module)   # dataclasses look their module up there
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True   # no demo-app/__pycache__
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


run_demo = load_run_demo()


def get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def get_json(url: str) -> dict | None:
    try:
        status, body = get(url)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def processes_under(directory: Path) -> list[str]:
    """Live processes whose command line or working directory is inside `directory`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue   # gone, a zombie, or not ours to read
        if str(directory) in cmdline or cwd == str(directory) or cwd.startswith(f"{directory}/"):
            found.append(f"pid {entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


def kill_processes_under(directory: Path) -> None:
    for line in processes_under(directory):
        try:
            os.kill(int(line.split()[1].rstrip(":")), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class DemoRun:
    """run_demo.py as a subprocess; its stdout is read line by line in a thread."""

    def __init__(self, demo_dir: Path):
        self.demo_dir = demo_dir
        self.proc = start_group(
            [sys.executable, str(RUN_DEMO)], env={**os.environ, "DEMO_DIR": str(demo_dir)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, str]:
        """The app URL, status URL and remote path, once all three lines are printed."""
        found: dict[str, str] = {}
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while len(found) < len(READY_PATTERNS) and not deadline.is_set():
                try:
                    line = self.lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    raise AssertionError(f"run_demo.py ended ({self.proc.wait()}):\n{self.output()}")
                self.seen.append(line)
                for key, pattern in READY_PATTERNS.items():
                    if match := pattern.match(line):
                        found[key] = match.group(1)
        finally:
            timer.cancel()
        assert len(found) == len(READY_PATTERNS), f"not ready after {timeout}s:\n{self.output()}"
        return found

    def output(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        logs = [f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self.demo_dir.glob("*.log")]
        return "\n".join(self.seen + logs)

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the script's process group, as a terminal sends it."""
        signal_group(self.proc, signal.SIGINT)
        return self.proc.wait(STOP_TIMEOUT)

    def clean_up(self) -> None:
        """After a failure: stop the script, then anything of this demo still running."""
        if self.proc.poll() is None:
            signal_group(self.proc, signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        stop_group(self.proc)
        kill_processes_under(self.demo_dir)


@pytest.fixture
def demo(tmp_path):
    run = DemoRun(tmp_path / "demo")
    yield run
    run.clean_up()


def push_message(clone: Path, text: str) -> tuple[str, str]:
    """Commit `text` as message.txt and push; the new SHA and what the push printed."""
    (clone / "message.txt").write_text(text + "\n")
    git("commit", "--quiet", "-am", "New message", cwd=clone)
    pushed = subprocess.run(["git", "push", "origin", "HEAD:main"], cwd=clone,
                            capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    return git("rev-parse", "HEAD", cwd=clone), pushed.stdout + pushed.stderr


def test_a_push_to_the_demo_remote_is_served_by_the_demo_app(demo, tmp_path):
    ready = demo.wait_for_ready()
    remote = Path(ready["remote"])
    assert remote == (tmp_path / "demo" / "remote.git").resolve()

    status, page = get(ready["app"])
    assert status == 200 and "Hello from gitsync!" in page
    first = git("ls-remote", str(remote), "refs/heads/main").split()[0]
    assert get_json(f"{ready['app']}version")["commit"] == first
    status, page = get(ready["status"])
    assert status == 200 and "<html" in page.lower()
    assert get_json(f"{ready['status']}api/v1/status")["commit"] == first

    clone = tmp_path / "clone"
    git("clone", "--quiet", str(remote), str(clone))
    new, pushed = push_message(clone, "Pushed by the demo test")
    assert "remote: gitsync: 202 sync started" in pushed

    served = wait_for(lambda: (get_json(f"{ready['app']}version") or {}).get("commit") == new,
                      timeout=60, interval=0.1, message="the app to serve the pushed commit")
    assert served
    version = wait_for(lambda: (v := get_json(f"{ready['app']}version") or {}).get("live") and v,
                       timeout=60, interval=0.1, message="the demo page to say live")
    assert (version["commit"], version["message"]) == (new, "Pushed by the demo test")
    # --preload: the new commit ran in the interpreter that had imported Flask beforehand.
    app_log = (demo.demo_dir / "app.log").read_text()
    assert f"(GITSYNC_HASH={new}, warm)" in app_log, demo.output()
    # --prepare: extra-requirements.txt was prepared once, for the first commit; the push left it alone.
    assert app_log.count("preparing ") == 1 and f"prepared {first}" in app_log, demo.output()

    running = "\n".join(processes_under(demo.demo_dir))   # so the check below can see them
    assert "gitsync --repo" in running and "gitsync-reload" in running, running
    assert re.search(r"demo-app/app\.py \(cwd .*/sync/\.worktrees/" + new, running), running

    push_a_bug_and_see_it_rolled_back(demo, ready, clone, new)

    assert demo.interrupt() == 0, demo.output()
    leftovers = wait_for(lambda: not processes_under(demo.demo_dir), timeout=30, interval=0.1,
                         message="every process of the demo to end")
    assert leftovers, processes_under(demo.demo_dir)


def push_a_bug_and_see_it_rolled_back(demo: DemoRun, ready: dict, clone: Path, good: str) -> None:
    """As the printed instructions say: break app.py, push; the old commit keeps serving."""
    demo.output()   # reads what it printed so far into demo.seen
    assert any("To push a bug" in line for line in demo.seen), demo.output()
    with open(clone / "demo-app" / "app.py", "a") as handle:
        handle.write("def broken(:\n")
    git("commit", "--quiet", "-am", "A bug", cwd=clone)
    git("push", "--quiet", "origin", "HEAD:main", cwd=clone)
    bad = git("rev-parse", "HEAD", cwd=clone)
    sidecar = f"{ready['status']}api/v1/status"
    shown = wait_for(lambda: (s := get_json(sidecar) or {}).get("rollout", {}).get("commit") == bad
                     and s["rollout"]["state"] == "rolled_back" and s, timeout=60, interval=0.2,
                     message="the broken push to be rolled back", detail=demo.output)
    # The reason is gitsync-reload's one line ("exited 1"; with --preload its output is
    # not captured, so no SyntaxError line: see the report).
    assert shown["live_commit"] == good and shown["rollout"]["reason"].startswith("exited 1")
    assert [row["commit"] for row in shown["bad_commits"]] == [bad]
    assert get_json(f"{ready['app']}version")["commit"] == good
    status, page = get(ready["status"])
    assert status == 200 and bad[:7] in page and "rolled back" in page


# -- the remote and its hook, without the processes -------------------------------------------


def make_demo(directory: Path, api_port: int) -> run_demo.Demo:
    return run_demo.Demo(directory.resolve(), app_port=1, api_port=api_port, run_id="test")


def test_the_remote_holds_the_app_as_the_images_expect(tmp_path):
    demo_config = make_demo(tmp_path / "demo", 9)
    assert run_demo.seed_remote(demo_config) is True
    files = git("ls-tree", "-r", "--name-only", "HEAD", cwd=demo_config.remote).splitlines()
    assert {"message.txt", "demo-app/app.py", "demo-app/requirements.txt", "demo-app/README.md",
            "demo-app/templates/index.html"} <= set(files)
    assert not [name for name in files if "run_demo" in name or "__pycache__" in name]
    assert git("symbolic-ref", "HEAD", cwd=demo_config.remote) == "refs/heads/main"


def test_a_second_run_keeps_the_remote_and_writes_the_hook_again(tmp_path):
    first = make_demo(tmp_path / "demo", 9)
    run_demo.prepare(first)
    head = git("rev-parse", "HEAD", cwd=first.remote)
    second = make_demo(tmp_path / "demo", 10)
    assert run_demo.prepare(second) is False
    assert git("rev-parse", "HEAD", cwd=second.remote) == head
    settings = json.loads((second.remote / "hooks" / run_demo.HOOK_CONFIG).read_text())
    assert settings["url"] == "http://127.0.0.1:10/api/v1/webhook"
    assert os.access(second.remote / "hooks" / "post-receive", os.X_OK)
    assert second.receiver_secret.stat().st_mode & 0o777 == 0o600
    assert second.api_token.stat().st_mode & 0o777 == 0o600


class Recorder(BaseHTTPRequestHandler):
    """Answers every POST as gitsync's receiver would for a push, and keeps the request."""

    received: list[tuple[list[tuple[str, str]], bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers.items(), body))
        answer = json.dumps({"result": "sync started"}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_hook_sends_a_signed_github_push_event(tmp_path, receiver):
    demo_config = make_demo(tmp_path / "demo", receiver.server_address[1])
    run_demo.prepare(demo_config)
    clone = tmp_path / "clone"
    git("clone", "--quiet", str(demo_config.remote), str(clone))
    new, pushed = push_message(clone, "signed")

    assert "remote: gitsync: 202 sync started" in pushed
    [(sent, body)] = Recorder.received
    headers = dict(sent)   # the names exactly as sent
    secret = demo_config.receiver_secret.read_bytes().strip()
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected
    assert headers["X-GitHub-Event"] == "push" and headers["Content-Type"] == "application/json"
    assert json.loads(body)["after"] == new
    delivery = parse_delivery(headers, body, secret)
    assert (delivery.forge, delivery.kind) == ("github", "push")
    assert re.fullmatch(r"[0-9a-f-]{36}", delivery.delivery_id)
    assert [(change.ref, change.after) for change in delivery.changes] == [("refs/heads/main", new)]
    assert secret.decode() not in (demo_config.remote / "hooks" / "post-receive").read_text()


def test_the_push_succeeds_and_says_so_when_gitsync_is_not_running(tmp_path):
    with run_demo.socket.socket() as unused:   # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    demo_config = make_demo(tmp_path / "demo", port)
    run_demo.prepare(demo_config)
    clone = tmp_path / "clone"
    git("clone", "--quiet", str(demo_config.remote), str(clone))
    new, pushed = push_message(clone, "nobody listens")

    assert "remote: gitsync: could not reach" in pushed
    assert git("rev-parse", "refs/heads/main", cwd=demo_config.remote) == new
