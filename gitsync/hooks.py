"""What happens after a sync: files other containers watch, and notifications.

Each hook is a listener the engine calls with every SyncResult. Quick ones act
inline; slow ones (the exechook, the outbound webhook) are a small `Hook` run by
a `HookRunner`: a worker thread that holds only the newest published hash, and
retries a failed run after a backoff, for whatever hash is newest by then.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .auth import PASSWORD_VARIABLE, USERNAME_VARIABLE
from .files import write_atomically
from .git import redact_url
from .model import SyncResult
from .procs import kill_group

log = logging.getLogger(__name__)

# gitsync's own secrets, and how it hands credentials to git: a hook never sees them.
_SECRET_VARIABLES = frozenset({"GITSYNC_PASSWORD", "GITSYNC_RECEIVER_SECRET", "GITSYNC_API_TOKEN",
                               "GITSYNC_GITHUB_APP_PRIVATE_KEY", "GITSYNC_PEER_SECRET",
                               "GIT_ASKPASS", "SSH_ASKPASS", "GIT_CONFIG_PARAMETERS",
                               USERNAME_VARIABLE, PASSWORD_VARIABLE})
_OUTPUT_LIMIT = 300


class TouchFile:
    """--touch-file: its mtime moves on each publish, for watchers that poll a file."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, result: SyncResult) -> None:
        if not result.announces:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        os.utime(self.path)


class ErrorFile:
    """--error-file: holds the last error while syncs fail, as git-sync writes it (a JSON
    object: Msg, Err, Args), so tools reading git-sync's file read ours; gone after a success."""

    MESSAGE = "error syncing repo, will retry"

    def __init__(self, path: Path):
        self.path = path
        self._failures = 0

    def __call__(self, result: SyncResult) -> None:
        if result.result == "error":
            self._failures += 1
            body = {"Msg": self.MESSAGE, "Err": result.error,
                    "Args": {"failCount": self._failures, "trigger": result.trigger}}
            write_atomically(self.path, json.dumps(body))
        else:
            self._failures = 0
            self.path.unlink(missing_ok=True)


# -- hooks run for each published hash --------------------------------------------

class HookError(Exception):
    """A hook run failed; str() is one line saying why."""


class Hook(Protocol):
    name: str
    timeout: float

    def run(self, sha: str, tree: Path) -> None:
        """Do the hook's work for the published commit `sha`; raise HookError on failure."""

    def cancel(self) -> None:
        """Abandon a run in progress (shutdown must not wait for it)."""


class HookRunner:
    """Runs one Hook in its own thread, always for the newest published hash.

    A failed run is retried after `backoff`; a hash published meanwhile replaces
    the failed one at once, so an old hash is never retried once a newer one exists.
    """

    def __init__(self, hook: Hook, backoff: float, *, one_time: bool = False):
        self.hook = hook
        self.backoff = backoff
        self.one_time = one_time
        self.last_error: str | None = None
        self._wake = threading.Condition()
        self._pending: tuple[str, Path] | None = None
        self._done: str | None = None    # the last hash the hook succeeded for
        self._tried: str | None = None   # the last hash the hook ran (or runs) for
        self._running = False
        self._stopping = False
        self._draining = False
        self._thread = threading.Thread(target=self._loop, name=f"hook-{hook.name}", daemon=True)
        self._thread.start()

    def __call__(self, result: SyncResult) -> None:
        if result.announces and result.commit and result.tree:
            self.send(result.commit, Path(result.tree))

    def send(self, sha: str, tree: Path) -> None:
        with self._wake:
            self._pending = (sha, tree)
            self._wake.notify_all()

    def close(self) -> None:
        """Stop the worker at once; with --one-time, a hash not yet run gets its one run first."""
        with self._wake:
            # One run per hash in --one-time mode: wait for a run under way or not yet started.
            pending = self._pending
            self._draining = self.one_time and pending is not None and self._has_work() and (
                self._running or pending[0] != self._tried)
            self._stopping = not self._draining
            self._wake.notify_all()
        if self._draining:
            self._thread.join(self.hook.timeout + 5)
            with self._wake:
                self._stopping = True
                self._wake.notify_all()
        self.hook.cancel()
        self._thread.join(5)

    def _backoff_over(self, sha: str) -> bool:
        """A stop, or a newer hash than the one that failed, ends the back-off at once."""
        return self._stopping or self._draining or (self._pending is not None and self._pending[0] != sha)

    def _has_work(self) -> bool:
        return self._pending is not None and self._pending[0] != self._done

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopping or self._draining or self._has_work())
                pending = self._pending
                if self._stopping or pending is None or not self._has_work() or (
                        self._draining and pending[0] == self._tried):
                    return
                sha, tree = pending
                self._tried, self._running = sha, True
            succeeded = self._run_once(sha, tree)
            with self._wake:
                self._running = False
                if self._draining:
                    return
                if not succeeded:   # back off, unless a newer hash or a stop comes first
                    self._wake.wait_for(functools.partial(self._backoff_over, sha), timeout=self.backoff)

    def _run_once(self, sha: str, tree: Path) -> bool:
        started = time.monotonic()
        try:
            self.hook.run(sha, tree)
        except HookError as err:
            with self._wake:
                self.last_error = str(err)
                quiet = self._stopping
            if not quiet:
                log.error("%s failed for %s (retrying in %gs, or at once for a newer commit): %s",
                          self.hook.name, sha, self.backoff, err)
            return False
        except Exception:   # a bug in a hook must not end its thread; say so loudly
            log.exception("%s crashed for %s", self.hook.name, sha)
            return False
        with self._wake:
            self._done, self.last_error = sha, None
        log.info("%s ran for %s in %d ms", self.hook.name, sha, (time.monotonic() - started) * 1000)
        return True


def hook_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a hook command starts from: ours, less every secret."""
    env = {key: value for key, value in environ.items() if key not in _SECRET_VARIABLES}
    if "GITSYNC_REPO" in env:
        env["GITSYNC_REPO"] = redact_url(env["GITSYNC_REPO"])
    return env


class ExecHook:
    """--exechook-command: run in the new tree with GITSYNC_HASH set; no shell, no arguments."""

    name = "exechook"

    def __init__(self, command: str, timeout: float, environ: Mapping[str, str]):
        self.command = command
        self.timeout = timeout
        self._env = hook_environment(environ)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def run(self, sha: str, tree: Path) -> None:
        log.info("exechook: running %s in %s", self.command, tree)
        if not tree.is_dir():
            raise HookError(f"the tree {tree} is gone")
        try:
            proc = self._start(sha, tree)
        except OSError as err:
            raise HookError(f"cannot run {self.command}: {err.strerror or err}") from None
        try:
            output, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            _reap(proc)
            raise HookError(f"{self.command} killed after the timeout "
                            f"({self.timeout:g}s)") from None
        finally:
            with self._lock:
                self._proc = None
        text = output.decode("utf-8", "replace").strip()
        if text:
            log.debug("exechook output:\n%s", text)
        if proc.returncode != 0:
            last = text.splitlines()[-1][:_OUTPUT_LIMIT] if text else "no output"
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with status {proc.returncode}")
            raise HookError(f"{self.command} {how}: {last}")

    def _start(self, sha: str, tree: Path) -> subprocess.Popen:
        with self._lock:
            if self._cancelled:
                raise HookError("gitsync is shutting down")
            # Its own process group, so a timeout also ends whatever the command started.
            self._proc = subprocess.Popen(
                [self.command], cwd=tree, env={**self._env, "GITSYNC_HASH": sha},
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)
            return self._proc

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            proc = self._proc
        if proc is not None:
            kill_group(proc)


class WebHook:
    """--webhook-url: an outbound HTTP call with the header Gitsync-Hash after each publish."""

    name = "webhook"

    def __init__(self, url: str, method: str, success_status: int, timeout: float):
        self.url = url
        self.method = method
        self.success_status = success_status
        self.timeout = timeout
        self._shown_url = redact_url(url)
        self._session = requests.Session()
        # Only a connection that never opened is retried here: the request was not sent.
        # Everything else is the runner's business, with --webhook-backoff.
        retry = Retry(total=2, connect=2, read=False, status=0, other=0, redirect=5,
                      backoff_factor=0.1, allowed_methods=None, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def run(self, sha: str, tree: Path) -> None:
        log.info("webhook: %s %s for %s", self.method, self._shown_url, sha)
        try:
            response = self._session.request(self.method, self.url, headers={"Gitsync-Hash": sha},
                                             timeout=self.timeout, stream=True)
        except requests.ReadTimeout:
            if self.success_status == 0:
                return   # fire and forget: it was delivered, the answer does not matter
            raise HookError(f"{self._shown_url} did not answer within {self.timeout:g}s") from None
        except requests.ConnectTimeout:
            raise HookError(f"cannot connect to {self._shown_url} "
                            f"within {self.timeout:g}s") from None
        except requests.ConnectionError as err:
            raise HookError(f"cannot reach {self._shown_url}: {_reason(err)}") from None
        except requests.RequestException as err:
            raise HookError(f"{self._shown_url}: {type(err).__name__}") from None
        status = response.status_code
        response.close()
        if self.success_status and status != self.success_status:
            raise HookError(f"{self._shown_url} answered {status}, expected {self.success_status}")

    def cancel(self) -> None:
        self._session.close()


def _reason(err: Exception) -> str:
    """The innermost cause's class name (ConnectionRefusedError...), never a URL or a query."""
    cause: BaseException = err
    while True:
        inner = getattr(cause, "reason", None) or cause.__context__
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    return type(cause).__name__


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a killed command; a child that left its group may hold the pipe open."""
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
