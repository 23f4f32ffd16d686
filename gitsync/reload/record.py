"""What gitsync-reload knows about its commands, in one place.

The loop and the rollover strategies change it; nothing else keeps a copy. A status
report (the rollouts issue) is a snapshot of this record: `commit` and `pid` are the
serving child's, `attempt` is the starting child (or the tree last tried, with
`failure`), and `tree` says which commit a flip would have to differ from to start
anything at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gitsync import procs

from .child import Child

BACKOFF_FIRST = 0.5  # delay before restarting a command that ended on its own...
BACKOFF_MAX = 30.0  # ...doubling up to this...
HEALTHY_RUN = 10.0  # ...and back to the first delay after a run this long


@dataclass
class Backoff:
    """When to start a command again after it ended on its own."""

    delay: float = BACKOFF_FIRST
    due: float | None = None  # set while waiting to start CMD again

    def schedule(self, ran_for: float) -> float:
        """Set the next start's time; the delay it waits."""
        if ran_for >= HEALTHY_RUN:
            self.delay = BACKOFF_FIRST
        delay, self.delay = self.delay, min(self.delay * 2, BACKOFF_MAX)
        self.due = time.monotonic() + delay
        return delay

    def is_due(self) -> bool:
        return self.due is not None and time.monotonic() >= self.due


@dataclass
class Record:
    serving: Child | None = None  # the command that serves
    starting: Child | None = None  # (hand-off) started beside it, not ready yet
    draining: list[Child] = field(default_factory=list)  # (hand-off) replaced, finishing their requests
    tree: str | None = None  # the tree CMD was last started in (or told about)
    status: int = 0  # how the last command ended, as a shell sees it (gitsync-reload's exit status)
    failure: str | None = None  # why the last attempt failed, one line: "exited 1", "killed by SIGSEGV"
    failed_tree: str | None = None  # set when `failure` is about a tree where no command started (prepare)
    backoff: Backoff = field(default_factory=Backoff)

    def children(self) -> list[Child]:
        return [child for child in (self.serving, self.starting, *self.draining) if child is not None]

    def ended_on_its_own(self, child: Child, status: int) -> None:
        self.status = status
        self.failure, self.failed_tree = procs.describe_exit(child.process.returncode), None

    def could_not_start(self, error: OSError) -> None:
        self.status = 127 if isinstance(error, FileNotFoundError) else 126
        self.failure, self.failed_tree = f"cannot start: {error.strerror or error}", None

    def attempt_failed(self, tree: str, reason: str) -> None:
        """A step before the command (--prepare) failed for tree: nothing started there, and
        what runs goes on running. reason is one line: "prepare failed: <its last line>"."""
        self.failed_tree, self.failure = tree, reason
