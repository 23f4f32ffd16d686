"""Running git: GitPython's command runner with a time limit, a clean environment and
scrubbed messages; what the remote and a commit say.

`gitsync.repository.Repository` builds every git step on this runner. Each step
raises GitError carrying the step's name and git's stderr with credentials
removed, so a log line or a status answer says what failed without leaking a secret.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import git as gitpython

from .model import SyncError
from .procs import kill_group

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
TARGET_REF = "refs/gitsync/target"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


class GitError(SyncError):
    """A git step failed; str() is one line: '<step>: <what git said>'."""

    def __init__(self, step: str, message: str, *, timed_out: bool = False):
        super().__init__(step, message)
        self.timed_out = timed_out


def redact_url(url: str) -> str:
    """The URL with any user:password@ part replaced, safe for logs and status."""
    return _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + "REDACTED@", url)


def is_full_sha(ref: str) -> bool:
    return bool(SHA_RE.match(ref))


class Deadline:
    """The time left in one sync cycle; every git call takes its timeout from it."""

    def __init__(self, seconds: float):
        self._end = time.monotonic() + seconds
        self.seconds = seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()


@dataclass(frozen=True)
class RemoteHead:
    """What the remote says the tracked ref points at."""

    sha: str          # the commit to publish (annotated tags already peeled)
    ref: str | None   # the full ref name it came from, e.g. refs/heads/main; None for a SHA


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    subject: str
    author: str
    time: str   # ISO 8601 author date


def config_parameters(pairs: Sequence[tuple[str, str]]) -> str:
    """Config entries as GIT_CONFIG_PARAMETERS holds them, quoted the way git reads them
    ('key'='value' ...): what `git -c` passes on, without anything on the command line."""
    def quote(text: str) -> str:
        return "'" + text.replace("'", "'\\''") + "'"
    return " ".join(f"{quote(key)}={quote(value)}" for key, value in pairs)


class GitRunner:
    """Runs git with an argument list, a time limit and a clean environment.

    `secrets` are scrubbed from any message that leaves this class; `env` adds
    to git's environment (credential helper, ssh command) without touching argv.
    `config` (--git-config) goes into git's environment too, ahead of any config
    entries `env` brings, as `git -c` would but out of `ps`: an http.extraHeader
    often carries a token.
    """

    def __init__(self, *, env: Mapping[str, str], config: Sequence[tuple[str, str]] = (),
                 secrets: Sequence[str] = (), program: str = "git"):
        self.program = program   # --git: the git binary, looked up on PATH
        self._env = dict(env)
        self._config = list(config)
        self._secrets = [s for s in secrets if s]
        self._git = gitpython.Git()
        self._running: set[subprocess.Popen] = set()
        self._running_lock = threading.Lock()
        self._cancelled = threading.Event()

    def with_env(self, extra: Mapping[str, str], secrets: Sequence[str] = ()) -> GitRunner:
        """A runner like this one with more environment (e.g. fresh credentials)."""
        clone = GitRunner.__new__(GitRunner)
        clone.program = self.program
        clone._env = {**self._env, **extra}
        clone._config = list(self._config)
        clone._secrets = self._secrets + [s for s in secrets if s]
        clone._git = self._git
        # Share the process registry, so cancel() on either reaches every running git.
        clone._running, clone._running_lock = self._running, self._running_lock
        clone._cancelled = self._cancelled
        return clone

    def scrub(self, text: str) -> str:
        text = redact_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "REDACTED")
        return text

    def run(self, step: str, args: Sequence[str], *, cwd: Path | None = None,
            deadline: Deadline | None = None) -> str:
        """Run `git <args>`; return stdout, or raise GitError naming `step`."""
        timeout = None
        if deadline is not None:
            timeout = deadline.remaining()
            if timeout <= 0:
                raise GitError(step, f"sync timeout ({deadline.seconds:g}s) reached before this step",
                               timed_out=True)
        if self._cancelled.is_set():
            # Shutting down: no new git may start, or it could outlive gitsync with a lock held.
            raise GitError(step, f"git {_subcommand(args)} not started: gitsync is shutting down")
        started = time.monotonic()
        status, out, err = self._execute([self.program, *args], cwd, timeout)
        name = _subcommand(args)
        log.debug("git %s: exit %s in %.0f ms", name, status, (time.monotonic() - started) * 1000)
        if status == 0:
            return out
        if status is None:
            limit = f" ({deadline.seconds:g}s)" if deadline is not None else ""
            raise GitError(step, f"git {name} killed after the sync timeout{limit}", timed_out=True)
        if self._cancelled.is_set():
            raise GitError(step, f"git {name} stopped: gitsync is shutting down")
        raise GitError(step, self._one_line(err) or f"git {name} exited with status {status}")

    def _execute(self, command: list[str], cwd: Path | None,
                 timeout: float | None) -> tuple[int | None, str, str]:
        """Run git in its own process group, so a timeout or shutdown kills its helpers too."""
        git = gitpython.Git(str(cwd)) if cwd else self._git
        handle = git.execute(command, as_process=True, env=self._environment(), start_new_session=True)
        proc = handle.proc
        assert proc is not None  # as_process=True always starts one
        with self._running_lock:
            self._running.add(proc)
            if self._cancelled.is_set():  # cancel() ran while this one was starting
                kill_group(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
            status: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            status = None
        finally:
            with self._running_lock:
                self._running.discard(proc)
        return status, out.decode("utf-8", "replace").rstrip("\n"), err.decode("utf-8", "replace")

    def _environment(self) -> dict[str, str]:
        env = dict(self._env)
        entries = [config_parameters(self._config), env.get("GIT_CONFIG_PARAMETERS", "")]
        if any(entries):
            env["GIT_CONFIG_PARAMETERS"] = " ".join(entry for entry in entries if entry)
        return env

    def cancel(self) -> None:
        """Kill every git process still running, and start no more (shutdown must not wait
        for a slow remote, and no git may outlive gitsync holding a lock)."""
        self._cancelled.set()
        with self._running_lock:
            running = list(self._running)
        for proc in running:
            kill_group(proc)

    def wait_until_idle(self, timeout: float) -> bool:
        """After cancel(): True once every git this runner started has been reaped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._running_lock:
                if not self._running:
                    return True
            time.sleep(0.01)
        with self._running_lock:
            return not self._running

    def _one_line(self, stderr: str) -> str:
        lines = [line.strip() for line in self.scrub(stderr).splitlines() if line.strip()]
        # git's first "fatal:"/"error:" line is the cause; hints and "please make sure" follow it.
        for index, line in enumerate(lines):
            if line.startswith(("fatal:", "error:")):
                # ...except over SSH, where ssh says why just before git's generic line.
                if index > 0 and "Could not read from remote repository" in line:
                    return f"{lines[index - 1]}; {line}"
                return line
        return "; ".join(lines[:3])


def _subcommand(args: Sequence[str]) -> str:
    """The git command's name, past global options such as --git-dir DIR and -C DIR."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("--git-dir", "-C", "-c") else rest[1:]
    return rest[0] if rest else "git"


def _parse_head(out: str, url: str) -> RemoteHead:
    branch, sha = None, None
    for line in out.splitlines():
        left, _, name = line.partition("\t")
        if name != "HEAD":
            continue
        if left.startswith("ref: "):
            branch = left[len("ref: "):].strip()
        elif SHA_RE.match(left):
            sha = left
    if sha is None:
        raise GitError("ls-remote", f"remote {redact_url(url)} has no HEAD (empty repository?)")
    return RemoteHead(sha=sha, ref=branch)


def _pick_ref(out: str, names: list[str], ref: str) -> RemoteHead:
    found = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name in names and SHA_RE.match(sha):
            found[name] = sha
    # Branches win over tags of the same name; a tag's peeled commit over the tag object.
    for name in names:
        if name.endswith("^{}") or name not in found:
            continue
        peeled = found.get(f"{name}^{{}}")
        return RemoteHead(sha=peeled or found[name], ref=name)
    raise GitError("ls-remote", f"ref {ref!r} not found on the remote")


def git_environment(root: Path) -> dict[str, str]:
    """The environment every git call gets: no prompts, no outside config surprises."""
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "LANGUAGE": "C",
        # Never discover a repository above <root> (root may live inside another repo).
        "GIT_CEILING_DIRECTORIES": str(root.parent),
        "GIT_OPTIONAL_LOCKS": "0",
    }
    return env

