"""Hooks after a publish: the exechook and the outbound webhook, retried for the newest hash.

Real engines publish real commits; the exechook is a real script, the webhook
goes to a real HTTP server on 127.0.0.1 that records what it received.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gitsync.cli import attach_hooks, build_engine
from gitsync.config import parse_args
from support.processes import alive
from support.waiting import stays, wait_for

CLOSE_DEADLINE = 15.0   # far below the 30 s the hook's command sleeps

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO)


@pytest.fixture
def hooked(tmp_path):
    """`make(*flags)`: a prepared engine over tmp_path/root with gitsync's hooks attached.

    The hooks are closed (their workers and commands stopped) at teardown.
    """
    made = []

    def make(url: str, *flags: str):
        config = parse_args(["--repo", url, "--root", str(tmp_path / "root"), "--http-bind", "",
                             *flags], {})
        engine = build_engine(config)
        hooks = attach_hooks(config, engine)
        made.extend(hooks)
        engine.prepare()
        return engine, hooks

    yield make
    for hook in made:
        getattr(hook, "close", lambda: None)()


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- exechook ------------------------------------------------------------------------------

@pytest.fixture
def recorder(tmp_path):
    """A hook script that records each run; it fails while `fail` exists."""
    out = tmp_path / "hook-out"
    out.mkdir()
    script = tmp_path / "hook.sh"
    script.write_text(f"""#!/bin/sh
{{ echo "args=$#"; echo "cwd=$(pwd -P)"; echo "link=$(readlink {tmp_path}/root/repo.git)"
   env; }} > {out}/"$GITSYNC_HASH".env
echo "$GITSYNC_HASH" >> {out}/runs
if [ -e {out}/fail ]; then echo "failing on purpose"; exit 3; fi
""")
    script.chmod(0o755)
    return script, out


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines())
    return {key: value for key, _, value in pairs}


def test_exechook_runs_in_the_new_tree_after_the_flip_without_secrets(
        remote, tmp_path, hooked, recorder, monkeypatch):
    script, out = recorder
    for name in ("GITSYNC_PASSWORD", "GITSYNC_API_TOKEN", "GITSYNC_RECEIVER_SECRET"):
        monkeypatch.setenv(name, f"s3cr3t-{name}")
    monkeypatch.setenv("GITSYNC_REPO", "https://bob:s3cr3t-in-url@example.com/app.git")
    engine, _ = hooked(remote.url, "--exechook-command", str(script))
    first = engine.sync_once("start")
    assert first.result == "published"
    wait_for(lambda: lines(out / "runs") == [first.commit], message="the hook for the first commit")
    second_sha = remote.commit_and_push({"README.md": "v2\n"})
    assert engine.sync_once("poll").result == "published"
    wait_for(lambda: lines(out / "runs") == [first.commit, second_sha], message="the second run")

    env = read_env(out / f"{second_sha}.env")
    assert env["GITSYNC_HASH"] == second_sha
    assert env["args"] == "0"
    assert env["cwd"] == str((tmp_path / "root" / ".worktrees" / second_sha).resolve())
    assert env["link"] == f".worktrees/{second_sha}"   # already flipped when the hook runs
    assert env["PATH"] == os.environ["PATH"]
    assert not [value for value in env.values() if "s3cr3t" in value]
    assert env["GITSYNC_REPO"] == "https://REDACTED@example.com/app.git"


def test_a_failed_exechook_is_retried_for_the_newest_hash_only(remote, hooked, recorder, caplog):
    script, out = recorder
    (out / "fail").touch()
    engine, _ = hooked(remote.url, "--exechook-command", str(script), "--exechook-backoff", "100ms")
    old = engine.sync_once("start").commit
    wait_for(lambda: len(lines(out / "runs")) >= 3, message="retries of the failing hook")
    assert set(lines(out / "runs")) == {old}
    assert (f"exechook failed for {old} (retrying in 0.1s, or at once for a newer commit): "
            f"{script} exited with status 3: failing on purpose") in caplog.text

    new = remote.commit_and_push({"README.md": "v2\n"})
    assert engine.sync_once("poll").commit == new
    wait_for(lambda: lines(out / "runs").count(new) >= 2, message="retries for the new hash")
    (out / "fail").unlink()
    wait_for(lambda: f"exechook ran for {new}" in caplog.text, message="a successful run")
    runs = lines(out / "runs")
    assert old not in runs[runs.index(new):]   # never back to the old hash
    assert stays(lambda: lines(out / "runs") == runs, 0.4)   # and no run after the success


def test_exechook_timeout_kills_the_command_and_close_is_prompt(remote, tmp_path, hooked):
    pids = tmp_path / "pids"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\nsleep 30 &\necho $! >> {pids}\nwait\n")
    script.chmod(0o755)
    engine, hooks = hooked(remote.url, "--exechook-command", str(script),
                           "--exechook-timeout", "300ms", "--exechook-backoff", "50ms")
    engine.sync_once("start")
    wait_for(lambda: len(lines(pids)) >= 2, message="a second run after the first timed out")
    first_sleep = int(lines(pids)[0])
    wait_for(lambda: not alive(first_sleep), message="the timed-out command's child to die")

    # Prompt: close() does not wait for the running command (it would sleep 30 s).
    closer = threading.Thread(target=lambda: [hook.close() for hook in hooks])
    closer.start()
    closer.join(CLOSE_DEADLINE)
    assert not closer.is_alive(), f"close() still waiting after {CLOSE_DEADLINE} s"
    # SIGKILL is delivered asynchronously: give the kernel a moment.
    wait_for(lambda: not any(alive(int(pid)) for pid in lines(pids)),
             message="every command started by the hook to die")


def test_one_time_waits_for_the_exechook(remote, tmp_path, gitsync):
    runs = tmp_path / "runs"
    script = tmp_path / "slow.sh"
    script.write_text(f'#!/bin/sh\nsleep 0.5\necho "$GITSYNC_HASH" >> {runs}\n')
    script.chmod(0o755)
    proc = gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--one-time",
                   "--exechook-command", str(script))
    assert proc.wait(20) == 0
    assert lines(runs) == [remote.head()]
    assert f"exechook ran for {remote.head()}" in proc.output


def test_one_time_exits_1_when_the_exechook_fails(remote, tmp_path, gitsync):
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    script.chmod(0o755)
    proc = gitsync("--repo", remote.url, "--root", str(tmp_path / "root"), "--one-time",
                   "--exechook-command", str(script), "--exechook-backoff", "100ms")
    assert proc.wait(20) == 1
    assert "the sync succeeded but a hook failed" in proc.output


# -- outbound webhook ------------------------------------------------------------------------

class Receiver:
    """An HTTP server that records every request and answers `status` (after `delay`)."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.status, self.delay = status, delay
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                receiver.requests.append((self.command, self.path, dict(self.headers)))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hashes(self) -> list[str]:
        return [headers.get("Gitsync-Hash") for _, _, headers in self.requests]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def test_webhook_sends_the_hash_and_retries_for_the_newest_only(remote, hooked, receiver, caplog):
    server = receiver(status=500)
    engine, _ = hooked(remote.url, "--webhook-url", server.url + "/deploy", "--webhook-method",
                       "put", "--webhook-success-status", "204", "--webhook-backoff", "100ms")
    old = engine.sync_once("start").commit
    wait_for(lambda: len(server.requests) >= 2, message="a retried webhook")
    method, path, headers = server.requests[0]
    assert (method, path, headers["Gitsync-Hash"]) == ("PUT", "/deploy", old)
    assert (f"webhook failed for {old} (retrying in 0.1s, or at once for a newer commit): "
            f"{server.url}/deploy answered 500, expected 204") in caplog.text

    new = remote.commit_and_push({"README.md": "v2\n"})
    assert engine.sync_once("poll").commit == new
    wait_for(lambda: new in server.hashes(), message="the webhook for the new hash")
    server.status = 204
    wait_for(lambda: f"webhook ran for {new}" in caplog.text, message="a successful webhook")
    hashes = server.hashes()
    assert old not in hashes[hashes.index(new):]
    assert stays(lambda: server.hashes() == hashes, 0.4)


def test_webhook_success_status_zero_is_fire_and_forget(remote, hooked, receiver, caplog):
    server = receiver(status=500, delay=2)
    engine, _ = hooked(remote.url, "--webhook-url", server.url, "--webhook-success-status", "0",
                       "--webhook-timeout", "200ms", "--webhook-backoff", "50ms")
    sha = engine.sync_once("start").commit
    wait_for(lambda: f"webhook ran for {sha}" in caplog.text, message="the webhook")
    assert stays(lambda: server.hashes() == [sha], 0.3)
    assert "webhook failed" not in caplog.text


def test_unreachable_webhook_is_retried_and_its_credentials_never_shown(remote, hooked, caplog):
    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://hook-user:hook-Secret-77@127.0.0.1:{port}/notify?x=1"
    engine, hooks = hooked(remote.url, "--webhook-url", url, "--webhook-backoff", "100ms")
    sha = engine.sync_once("start").commit
    wait_for(lambda: caplog.text.count(f"webhook failed for {sha}") >= 2, message="two failures")
    assert (f"cannot reach http://REDACTED@127.0.0.1:{port}/notify?x=1: ConnectionRefusedError"
            in caplog.text)
    assert "hook-Secret-77" not in caplog.text
    retry = hooks[0].hook._session.get_adapter(url).max_retries
    assert retry.connect == 2 and retry.read is False
