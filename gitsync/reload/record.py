"""What gitsync-reload knows about its commands, in one place.

The loop and the rollover strategies change it; nothing else keeps a copy. The status
API reads `snapshot()`, which the loop publishes each tick (status.py): `commit` and
`pid` are the serving child's, `attempt` is the commit starting or that failed (with a
one-line reason), `trees` every tree a command of ours runs in, and `tree` says which
commit a flip would have to differ from to start anything at all.

A step that runs before the command (e.g. preparing a new tree) reports through the
same calls: `attempt_starting(commit)`, then `attempt_failed(commit, reason, output)`.
"""

from __future__ import annotations

import os
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


STARTING, READY, FAILED, STOPPED = "starting", "ready", "failed", "stopped"


@dataclass
class Attempt:
    """A commit not running yet, or that failed: what the status calls `attempt`."""

    commit: str
    state: str = STARTING  # STARTING or FAILED
    reason: str | None = None  # one line: "exited 1", "not ready after 10s"
    output: str | None = None  # the command's last lines (--report-output)

    def as_json(self) -> dict:
        data = {"commit": self.commit, "state": self.state, "reason": self.reason}
        if self.output is not None:
            data["output"] = self.output
        return data


@dataclass
class Record:
    serving: Child | None = None  # the command that serves
    starting: Child | None = None  # (hand-off) started beside it, not ready yet
    draining: list[Child] = field(default_factory=list)  # (hand-off) replaced, finishing their requests
    tree: str | None = None  # the tree CMD was last started in (or told about)
    status: int = 0  # how the last command ended, as a shell sees it (gitsync-reload's exit status)
    failure: str | None = None  # why the last attempt failed, one line: "exited 1", "killed by SIGSEGV"
    backoff: Backoff = field(default_factory=Backoff)
    attempt: Attempt | None = None  # the commit starting, or the last one that failed
    target: str | None = None  # the commit the link pointed to when last looked at
    stopping: bool = False  # gitsync-reload is shutting down

    def children(self) -> list[Child]:
        return [child for child in (self.serving, self.starting, *self.draining) if child is not None]

    def attempt_starting(self, commit: str) -> None:
        """A start on commit begins. A retry of a commit that failed stays reported as failed
        until it is ready: a poller between two crashes must still see the failure."""
        if self.attempt is not None and self.attempt.commit == commit and self.attempt.state == FAILED:
            return
        self.attempt = Attempt(commit)

    def attempt_failed(self, commit: str, reason: str, output: str | None = None) -> None:
        """Starting commit failed (the command, or a step before it); reason is one line."""
        self.failure = reason
        self.attempt = Attempt(commit, FAILED, reason, output)

    def became_ready(self, child: Child) -> None:
        child.counted = True
        if child.probe is not None:
            child.probe.stop.set()  # READY=1 may come first: stop polling the app
        # Ready in the newest tree: whatever failed before it is behind us.
        if self.attempt is not None and (self.attempt.commit == child.sha or child.tree == self.tree):
            self.attempt = None

    def back_to_serving(self) -> None:
        """The link moved back to the commit that serves: nothing is pending any more."""
        self.attempt = None
        self.failure = None

    def ended_on_its_own(self, child: Child, status: int) -> None:
        self.status = status
        output = child.output.text() if child.output is not None else None
        self.attempt_failed(child.sha, procs.describe_exit(child.process.returncode), output)

    def could_not_start(self, error: OSError, commit: str) -> None:
        self.status = 127 if isinstance(error, FileNotFoundError) else 126
        self.attempt_failed(commit, f"cannot start: {error.strerror or error}")

    def state(self) -> str:
        if self.stopping:
            return STOPPED
        if self.attempt is not None:
            return self.attempt.state
        if self.serving is not None:
            return READY if self.serving.counted else STARTING
        return STOPPED  # nothing runs yet: no link, or nothing to start

    def snapshot(self) -> dict:
        """What GET /api/v1/status shows, taken by the loop (the only writer)."""
        serving = self.serving
        return {
            "commit": os.path.basename(serving.runs) if serving is not None else None,
            "state": self.state(),
            "pid": serving.pid if serving is not None else None,
            "target": self.target,
            "attempt": self.attempt.as_json() if self.attempt is not None else None,
            "trees": self.trees(),
        }

    def trees(self) -> list[dict]:
        """Every tree a command of ours runs in: none of them may be removed."""
        roles = [("serving", self.serving), ("starting", self.starting)]
        roles += [("draining", child) for child in self.draining]
        return [{"role": role, "commit": child.sha, "path": child.tree, "pid": child.pid}
                for role, child in roles if child is not None]
