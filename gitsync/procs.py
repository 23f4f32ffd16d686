"""Process groups: start one, signal it, kill it, wait for it, reap what it leaves.

Every command gitsync starts (git, a hook, gitsync-reload's app) runs in a session
and process group of its own, so one signal to the group reaches the helpers and
grandchildren it started, and a stop never leaves one behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
GROUP_POLL = 0.01  # a process group has nothing to wait on; look this often while it stops


def spawn_group(argv: Sequence[str], cwd: str, env: Mapping[str, str],
                pass_fds: Sequence[int] = (), output: int | None = None) -> subprocess.Popen:
    """Start argv as the leader of a new session and process group; raise OSError.
    With output=subprocess.PIPE its stdout and stderr come together on process.stdout."""
    joined = subprocess.STDOUT if output is not None else None
    return subprocess.Popen(tuple(argv), cwd=cwd, env=dict(env), start_new_session=True, pass_fds=tuple(pass_fds),
                            stdin=subprocess.DEVNULL if output is not None else None, stdout=output, stderr=joined)


def signal_group(pgid: int, signum: int) -> None:
    """Send signum to every process in the group; a group already gone is no error."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session, and every helper in its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, though not ours to signal
    return True


def group_ended(proc: subprocess.Popen) -> bool:
    """The leader has exited and no process is left in its group."""
    return proc.poll() is not None and not group_alive(proc.pid)


def exit_status(returncode: int | None) -> int:
    """A shell's view of how a process ended: its code, or 128+N for signal N."""
    if returncode is None:
        return 128 + signal.SIGKILL
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int | None) -> str:
    """One line for a person: 'exited 1', 'killed by SIGSEGV'."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited {returncode}"


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so a grandchild whose parent died is ours to reap."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("prctl(PR_SET_CHILD_SUBREAPER) unavailable; orphans go to init")


def reap_orphans(ours: Sequence[subprocess.Popen] = ()) -> None:
    """Collect exited descendants re-parented to us, leaving our own children to Popen
    (which reaps them itself and keeps their status)."""
    mine = {proc.pid: proc for proc in ours}
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        if info.si_pid in mine:
            mine.pop(info.si_pid).poll()
            continue
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            return


def wait_group(proc: subprocess.Popen, timeout: float, interrupt: threading.Event,
               ours: Sequence[subprocess.Popen] = ()) -> bool:
    """Wait until the group has ended (True), the timeout passed or interrupt is set (False).
    Orphans of the group are reaped meanwhile; `ours` are other children left to Popen."""
    deadline = time.monotonic() + timeout
    while True:
        reap_orphans((proc, *ours))
        if group_ended(proc):
            return True
        if time.monotonic() >= deadline or interrupt.wait(GROUP_POLL):
            return False
