"""SIGTERM in the middle of a large checkout: gitsync exits, and no git outlives it."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from support.repos import Remote, git, published_sha
from support.waiting import wait_for

FILES = 4000  # enough that a checkout of them all is still running when SIGTERM comes


def big_remote(base: Path) -> Remote:
    remote = Remote(base)
    for index in range(FILES):
        path = remote.work / f"d{index % 60}" / f"f{index}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {index}\n" * 40)
    git("add", "-A", cwd=remote.work)
    git("commit", "--quiet", "-m", "many files", cwd=remote.work)
    git("push", "--quiet", "origin", remote.branch, cwd=remote.work)
    return remote


def processes_naming(text: str) -> list[str]:
    """Command lines (or working directories) of live processes that mention `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if text in cmdline or cwd.startswith(text):
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


def rewrite_every_file(remote: Remote, version: int) -> str:
    for path in remote.work.glob("d*/f*.txt"):
        path.write_text(f"version {version} of {path.name}\n" * 40)
    git("commit", "--quiet", "-am", f"version {version}", cwd=remote.work)
    git("push", "--quiet", "origin", remote.branch, cwd=remote.work)
    return remote.head()


def logging_git(bin_dir: Path, log: Path) -> dict[str, str]:
    """An environment whose `git` notes when each git starts, then runs the real one."""
    real = shutil.which("git")
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def gits_started_after(log: Path, moment: float) -> list[str]:
    return [line for line in log.read_text().splitlines() if float(line.split(" ", 1)[0]) > moment]


def test_sigterm_during_a_large_checkout_leaves_no_git_running(tmp_path, gitsync):
    remote = big_remote(tmp_path / "remotes")
    root = tmp_path / "root"
    git_log = tmp_path / "git-starts.log"
    env = logging_git(tmp_path / "bin", git_log)
    args = ("--repo", remote.url, "--root", str(root), "--link", "app", "--http-bind", "", "--period", "200ms")
    proc = gitsync(*args, env=env)
    wait_for(lambda: published_sha(root / "app") == remote.head(), timeout=120, message="the first publish")
    wait_for(lambda: (root / ".worktrees" / ".spare" / "d0").is_dir(), timeout=60, message="the spare tree")
    rewrite_every_file(remote, 2)  # the next build rewrites every file of the spare
    wait_for(lambda: [p for p in processes_naming(str(root)) if " checkout " in p or " reset " in p],
             timeout=60, interval=0.005, message="the checkout of the new commit to start")
    stopped_at = time.time()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.output
    assert gits_started_after(git_log, stopped_at) == [], "git started after SIGTERM"
    assert processes_naming(str(root)) == [], "a git process outlived gitsync"
    # The next start finds what the killed checkout left and publishes the new commit.
    again = gitsync(*args, "--one-time")
    assert again.wait(timeout=120) == 0, again.output
    assert published_sha(root / "app") == remote.head()
    assert (root / "app" / "d0" / "f0.txt").read_text().startswith("version 2 of f0.txt")
