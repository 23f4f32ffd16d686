"""Real git repositories for tests: a bare remote and a clone that pushes to it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

ZERO_SHA = "0" * 40


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        check: bool = True) -> str:
    """Run git as a user would, returning stdout."""
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout.strip()


class Remote:
    """A bare repository (what gitsync syncs from) and a work clone that pushes to it."""

    def __init__(self, base: Path, name: str = "repo.git", branch: str = "main"):
        self.path = base / name
        self.work = base / f"{name}-work"
        self.branch = branch
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.path))
        git("init", "--quiet", f"--initial-branch={branch}", str(self.work))
        git("remote", "add", "origin", str(self.path), cwd=self.work)
        # Allow fetching any commit by SHA, as GitHub and GitLab do.
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=self.path)

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit(self, files: Mapping[str, str | None], message: str = "change") -> str:
        """Write (or, for None, delete) files in the work clone and commit them."""
        for name, content in files.items():
            target = self.work / name
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        return self.head()

    def push(self, branch: str | None = None, *, force: bool = False) -> None:
        branch = branch or self.branch
        args = ["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"]
        if force:
            args.insert(1, "--force")
        git(*args, cwd=self.work)

    def commit_and_push(self, files: Mapping[str, str | None], message: str = "change",
                        branch: str | None = None) -> str:
        sha = self.commit(files, message)
        self.push(branch)
        return sha

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def remote_head(self, ref: str = "HEAD") -> str:
        return git("rev-parse", ref, cwd=self.path)

    def tag(self, name: str, *, annotated: bool = False) -> str:
        args = ["tag", "-a", "-m", f"tag {name}", name] if annotated else ["tag", name]
        git(*args, cwd=self.work)
        git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=self.work)
        return self.head()

    def switch(self, branch: str, *, create: bool = False) -> None:
        git("checkout", "--quiet", *(["-b"] if create else []), branch, cwd=self.work)

    def reset_hard(self, rev: str) -> None:
        git("reset", "--quiet", "--hard", rev, cwd=self.work)

    def delete_branch(self, branch: str) -> None:
        git("push", "--quiet", "origin", f":refs/heads/{branch}", cwd=self.work)

    def set_default_branch(self, branch: str) -> None:
        git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=self.path)


def published_sha(link: Path) -> str | None:
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None


def argv_recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A `git` first on PATH that logs its argv, then runs the real git."""
    folder, log = tmp_path / "shim", tmp_path / "argv.log"
    folder.mkdir()
    shim = folder / "git"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {shutil.which("git")} "$@"\n')
    shim.chmod(0o755)
    return folder, log
