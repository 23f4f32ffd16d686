"""Processes for tests: each in its own process group, always stopped with the whole group.

`start_group(argv, ...)` starts a process as the leader of a new session;
`stop_group(proc)` SIGKILLs its group (and, for daemons whose children call
setsid, `kill_tree` its whole tree), reaps it and waits until every member is
really gone. `running(argv, ...)` is both as a context manager. /proc based:
psutil is not available.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence



def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of ``pid``, None if it is gone."""
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces or ')'.
    state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
    return state, int(ppid), int(pgrp)


def _all_stats() -> dict[int, tuple[str, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def _parent_map() -> dict[int, int]:
    """Map every live pid to its parent pid."""
    return {pid: ppid for pid, (_, ppid, _) in _all_stats().items()}


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie.

    Killed processes that were orphaned may stay zombies for good when
    pid 1 does not reap them (as in some containers); they run no code.
    """
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def cmdlines() -> dict[int, list[str]]:
    """argv of every running process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if raw and alive(int(entry)):
                found[int(entry)] = raw.rstrip(b"\0").decode(errors="replace").split("\0")
    return found


def pids_mentioning(text: str) -> set[int]:
    """Running processes with `text` anywhere in their command line (as `pgrep -f`).

    Substring matching because sshd rewrites its argv into one string.
    """
    return {pid for pid, args in cmdlines().items() if text in " ".join(args)}


def gone(pid: int) -> bool:
    """Not even a zombie: ended and reaped."""
    return not Path(f"/proc/{pid}").exists()


def wait_dead(pids: set[int], timeout: float = 10.0) -> None:
    """Wait until SIGKILLed ``pids`` have really exited: delivery is asynchronous."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survived SIGKILL: {sorted(filter(alive, pids))}")
        time.sleep(0.01)


def group_members(pgid: int) -> set[int]:
    """Live processes whose process group is `pgid`."""
    return {pid for pid, (state, _, pgrp) in _all_stats().items() if pgrp == pgid and state != "Z"}


def descendant_pids(pid: int) -> set[int]:
    """All processes below ``pid`` in the process tree (not ``pid`` itself)."""
    parents = _parent_map()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= frontier
    return found


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and everything below it, then reap ``proc``.

    sshd's per-connection children call setsid(), so killing the process
    group is not enough. The tree is frozen with SIGSTOP from the top down
    first: a stopped process can neither fork nor exit, so its children stay
    linked to it while we look for them, and none can escape to init.
    """
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGSTOP)
        frozen = {proc.pid}
        while True:
            new = descendant_pids(proc.pid) - frozen
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            frozen |= new
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
        proc.wait()
        wait_dead(frozen)
    proc.wait()


def start_group(argv: Sequence[str], **popen_args) -> subprocess.Popen:
    """Start `argv` as the leader of its own process group (so one killpg stops it all)."""
    return subprocess.Popen(list(argv), start_new_session=True, **popen_args)


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Send `signum` to `proc`'s group, as a terminal or a supervisor would."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)


def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL `proc`'s whole group unless it was already reaped; wait until all are gone.

    Once reaped, its pid (= group id) may belong to someone else, so it is left alone.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
        wait_dead(group_members(proc.pid), timeout)
    proc.wait(timeout)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid`, if `pid` still leads one (no Popen at hand)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def running(argv: Sequence[str], **popen_args) -> Iterator[subprocess.Popen]:
    """`start_group` for the body of a with block; the group is stopped however it ends."""
    proc = start_group(argv, **popen_args)
    try:
        yield proc
    finally:
        stop_group(proc)
