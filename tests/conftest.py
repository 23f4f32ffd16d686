"""Fixtures shared by every test module: isolated git, real remotes, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.api import api, api_factory, serve  # noqa: F401  (fixtures for every module)
from support.fake_engine import fake, fake_api  # noqa: F401
from support.processes import start_group, stop_group
from support.repos import Remote

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory, monkeypatch):
    """No test sees the machine's git config, and every commit has an author."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "Test Author")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "author@example.com")
    for name in list(os.environ):
        if name.startswith("GITSYNC_"):
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def remote(tmp_path) -> Remote:
    """A bare remote on main with one commit already pushed."""
    repo = Remote(tmp_path / "remotes")
    repo.commit_and_push({"README.md": "hello\n", "app/main.py": "print('v1')\n"}, "first")
    return repo


class GitsyncProcess:
    """A real `gitsync` process; its output goes to a file the test can read."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = start_group([str(BIN / "gitsync"), *args], stdout=self._log,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        stop_group(self.proc)   # with any git it left running
        self._log.close()


@pytest.fixture
def gitsync(tmp_path):
    """Start gitsync processes; every one is killed (with its git children) at teardown."""
    started: list[GitsyncProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> GitsyncProcess:
        proc = GitsyncProcess(list(args), tmp_path / f"gitsync-{len(started)}.log", env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def engine_factory(tmp_path):
    """Build and run a real Engine in a thread, from gitsync's own flags.

    `start("--repo", url, "--root", dir, ...)` returns the running engine; every
    engine is stopped and its thread joined at teardown.
    """
    import threading

    from gitsync.cli import attach_hooks, build_engine
    from gitsync.config import parse_args

    running = []

    def start(*args: str, env: dict[str, str] | None = None, run: bool = True):
        config = parse_args(list(args), env or {})
        engine = build_engine(config)
        hooks = attach_hooks(config, engine)
        thread = threading.Thread(target=engine.run, name="test-sync-loop", daemon=True)
        running.append((engine, thread, hooks))
        if run:
            thread.start()
        return engine

    yield start
    for engine, thread, hooks in running:
        engine.stop()
        if thread.is_alive():
            thread.join(10)
        for hook in hooks:
            getattr(hook, "close", lambda: None)()


@pytest.fixture
def app_server():
    """tests/appserver.py's FakeApp: an HTTP server answering as gitsync-reload's status API
    (or an app's health URL) with whatever the test sets; stopped at the end."""
    from appserver import FakeApp

    server = FakeApp()
    yield server
    server.stop()
