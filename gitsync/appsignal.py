"""Sidecar-only apps: after each publish, signal the app's processes (--app-signal).

An app that cannot run under gitsync-reload runs as its image says, in a container of
its own; the pod shares one process namespace (`shareProcessNamespace: true`), so its
processes show in gitsync's /proc. After each publish, every process whose command
line (its argv joined by spaces) matches --app-process gets --app-signal: HUP to
reload, TERM or KILL to end it, so that the kubelet starts the container again on
the new tree.

gitsync never signals itself, a process it started, or its own process group: a
pattern that matches gitsync's own command line is refused at start (config.py), and
a match among gitsync's own processes is skipped at run time and named in the
status. Nothing matching, or a signal the kernel refuses (another user's process),
is an error in the log and the status, and nothing else happens. Processes are read
from /proc; the signal goes through a pidfd taken before the command line is read
again, so a pid reused in between is never signalled.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .model import SyncResult, rfc3339, utc_now

log = logging.getLogger(__name__)

PROC = Path("/proc")
SENT, GONE = "sent", "gone"


def command_line(pid: int | str, proc: Path = PROC) -> str | None:
    """argv joined by spaces; None for a process that is gone or has none (a kernel thread)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return text or None


def own_command_line() -> str | None:
    return command_line("self")


def matches_own_command_line(pattern: str) -> bool:
    """For the start check: would the pattern pick gitsync itself?"""
    own = own_command_line()
    return own is not None and re.search(pattern, own) is not None


def _parents_and_groups(proc: Path) -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process in /proc."""
    found = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            stat = (proc / entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces or ')'.
        _state, ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        found[int(entry)] = (int(ppid), int(pgrp))
    return found


def _descends_from(pid: int, ancestor: int, parents: dict[int, tuple[int, int]]) -> bool:
    seen = set()
    while pid in parents and pid not in seen:
        seen.add(pid)
        pid = parents[pid][0]
        if pid == ancestor:
            return True
    return False


class AppSignaller:
    """An engine listener: signals the app after each publish; snapshot() for the status."""

    def __init__(self, signum: int, pattern: str, proc: Path = PROC):
        self.signum = signal.Signals(signum)
        self.pattern = re.compile(pattern)
        self.proc = proc
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None
        self._published_before = False

    def __call__(self, result: SyncResult) -> None:
        if result.published:
            self.signal_app(result.commit)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            last = dict(self._last) if self._last else None
        return {"signal": self.signum.name, "pattern": self.pattern.pattern, "last": last}

    def signal_app(self, commit: str | None) -> dict[str, Any]:
        """Signal every matching process once; record and return what happened."""
        first, self._published_before = not self._published_before, True
        sent: list[int] = []
        problems: list[str] = []
        for pid, command in self.candidates(problems):
            outcome = self._send(pid, command)
            if outcome == SENT:
                sent.append(pid)
            elif outcome != GONE:
                problems.append(outcome)
        if not sent and not problems and not first:
            problems.append(f"no process matches --app-process {self.pattern.pattern!r}: nothing signalled")
        error = "; ".join(problems) or None
        self._report(commit, sent, error, first)
        record = {"at": rfc3339(utc_now()), "commit": commit, "pids": sent, "error": error}
        with self._lock:
            self._last = record
        return record

    def candidates(self, problems: list[str]) -> list[tuple[int, str]]:
        """Matching processes that are not gitsync's own; gitsync's own go into problems."""
        own_pid, own_group = os.getpid(), os.getpgrp()
        parents = _parents_and_groups(self.proc)
        found = []
        for pid, (_ppid, group) in sorted(parents.items()):
            command = command_line(pid, self.proc)
            if command is None or not self.pattern.search(command):
                continue
            if pid == own_pid or group == own_group or _descends_from(pid, own_pid, parents):
                problems.append(f"pid {pid} ({command[:60]!r}) is gitsync's own process, "
                                "child or process group: not signalled")
                continue
            found.append((pid, command))
        return found

    def _send(self, pid: int, command: str) -> str:
        """SENT; GONE (it ended, or its pid now names another command); or why it was refused."""
        try:
            with _PidHandle(pid) as handle:
                # Read again once the handle holds the process: a pid reused since the scan shows here.
                now = command_line(pid, self.proc)
                if now is None or not self.pattern.search(now):
                    return GONE
                handle.send(self.signum)
        except ProcessLookupError:
            return GONE
        except PermissionError:
            return (f"pid {pid} ({command[:60]!r}): not permitted to send {self.signum.name} "
                    "(another user's process?)")
        return SENT

    def _report(self, commit: str | None, sent: list[int], error: str | None, first: bool) -> None:
        short = (commit or "")[:12]
        if sent:
            log.info("app-signal: sent %s to pid %s (commit %s)", self.signum.name,
                     ", ".join(map(str, sent)), short)
        elif first and not error:
            log.info("app-signal: no process matches %r yet; the app starts on commit %s",
                     self.pattern.pattern, short)
        if error:
            log.error("app-signal: %s (commit %s)", error, short)


class _PidHandle:
    """A pidfd where the kernel has them (the signal reaches this process or none), else the pid."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd: int | None = None

    def __enter__(self) -> _PidHandle:
        try:
            self.fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            raise
        except OSError:
            self.fd = None   # no pidfd_open here (an old kernel, a seccomp profile): plain kill
        return self

    def send(self, signum: int) -> None:
        if self.fd is None:
            os.kill(self.pid, signum)
        else:
            signal.pidfd_send_signal(self.fd, signum)

    def __exit__(self, *_exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


class WithAppSignal:
    """The engine as the API sees it, its status carrying `app_signal`; every other call
    goes to the engine unchanged (the engine itself knows nothing of the app)."""

    def __init__(self, engine: Any, signaller: AppSignaller):
        self._engine = engine
        self._signaller = signaller

    def status(self):
        return replace(self._engine.status(), app_signal=self._signaller.snapshot())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._engine, name)
