"""One started command, and how commands are stopped: the stop signal to the whole
process group, then SIGKILL to the group after the grace period."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gitsync import procs
from gitsync.durations import format_duration

from .output import OutputTail
from .readiness import ReadyProbe
from .systemd import Notices

logger = logging.getLogger(__name__)

KILL_WAIT = 5.0  # how long to wait for the leader after SIGKILL


@dataclass
class Child:
    process: subprocess.Popen
    tree: str
    started: float
    notices: Notices | None = None  # its NOTIFY_SOCKET
    ready: bool = False  # it sent READY=1
    counted: bool = False  # counted ready: READY=1, --ready-url, --ready-after or the defaults (readiness.py)
    output: OutputTail | None = None  # --report-output: its last lines
    probe: ReadyProbe | None = None  # --ready-url: polls the URL until it answers 2xx
    warm: bool = False  # it runs in a spare interpreter that had the --preload modules imported
    stop_by: float | None = None  # once told to stop: when it gets SIGKILL
    reloaded: str | None = None  # (--signal-only) the tree it was last told to reload into

    @property
    def runs(self) -> str:
        """The tree whose code it runs: where it started, or where it reloaded into."""
        return self.reloaded or self.tree

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def sha(self) -> str:
        return os.path.basename(self.tree)

    def ran_for(self) -> float:
        return time.monotonic() - self.started

    def read_notices(self) -> bool:
        """Read its NOTIFY_SOCKET; True the first time READY=1 is seen."""
        if self.notices is None or not self.notices.ready() or self.ready:
            return False
        self.ready = True
        return True

    def close(self) -> None:
        if self.notices is not None:
            self.notices.close()
            self.notices = None
        if self.probe is not None:
            self.probe.close()
        if self.output is not None:
            self.output.close()


class Stopper:
    """Stops commands: the signal to the whole group, SIGKILL after the grace period.
    A set `force` event (a second SIGTERM) ends every grace period at once."""

    def __init__(self, signum: signal.Signals, grace: float, force: threading.Event,
                 others: Callable[[], Sequence[subprocess.Popen]]):
        self.signum = signum
        self.grace = grace
        self.force = force
        self.others = others  # our other children, left to Popen while orphans are reaped

    def end(self, child: Child) -> int:
        """Stop the child's whole group and wait for it; its exit status as a shell sees it."""
        if procs.group_ended(child.process):
            child.close()
            return procs.exit_status(child.process.returncode)
        self.signal(child)
        return self.finish(child)

    def signal(self, child: Child) -> None:
        """Tell the group to stop, and when it gets SIGKILL (child.stop_by)."""
        child.stop_by = time.monotonic() + self.grace
        if not procs.group_ended(child.process):
            procs.signal_group(child.pid, self.signum)

    def finish(self, child: Child) -> int:
        """Wait until the group of a signalled child has ended, SIGKILL it at stop_by."""
        stop_by = child.stop_by if child.stop_by is not None else time.monotonic()
        if not procs.wait_group(child.process, stop_by - time.monotonic(), self.force, self.others()):
            self.kill(child)
        else:
            self.ended(child)
        return procs.exit_status(child.process.returncode)

    def overdue(self, child: Child) -> bool:
        return self.force.is_set() or (child.stop_by is not None and time.monotonic() >= child.stop_by)

    def kill(self, child: Child) -> None:
        logger.warning("process group %s still running; sending SIGKILL", child.pid)
        procs.signal_group(child.pid, signal.SIGKILL)
        try:
            child.process.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            logger.error("pid %s survived SIGKILL for %s", child.pid, format_duration(KILL_WAIT))
        procs.reap_orphans((child.process, *self.others()))
        self.ended(child)

    def ended(self, child: Child) -> None:
        child.close()
        logger.info("pid %s ended with status %s", child.pid, procs.exit_status(child.process.returncode))
