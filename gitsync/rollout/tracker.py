"""Rollouts: follow each publish until the app runs it, and say what to do when it does not.

The engine calls `begin()` after a publish and `poll()` from its sync thread (often
while `active()`, else once a cycle); `poll()` returns a decision or None. The tracker
never touches the link itself: a Rollback decision is carried out by the engine, which
then calls `rolled_back()`. After that the commit rolled back to is watched too; if it
fails as well the state is `degraded` and nothing is rolled back again (no flapping).
Everything worth keeping goes to the volume at once (`ledger`, see ledger.py), so a
restart resumes by the same deadline; the bad marks, the pause and the snapshot for
the API live on `rollouts.ledger`, safe from any thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .ledger import Kept, Ledger, Rollout, RolloutResult
from .probes import Observation, Probe, one_line, same_commit, short

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Live:
    commit: str


@dataclass(frozen=True)
class Rollback:
    """Flip the link back to `to`, then call rolled_back(bad); `bad` is already marked bad."""

    to: str
    bad: str
    reason: str


@dataclass(frozen=True)
class Failed:
    """`commit` failed and there is nothing to roll back to (or --rollback is off)."""

    commit: str
    reason: str


@dataclass(frozen=True)
class Degraded:
    """The commit rolled back to failed too; nothing more is done until the next publish."""

    commit: str
    reason: str


Decision = Live | Rollback | Failed | Degraded


class Rollouts:
    def __init__(self, directory: Path, probe: Probe | None = None, *, timeout: float = 60.0,
                 rollback: bool = True, clock: Callable[[], float] = time.time):
        self.probe = probe
        self.timeout = timeout
        self.rollback = rollback and probe is not None
        self._clock = clock
        self.ledger = Ledger(directory, clock)
        self._seen: Observation | None = None
        self._rollback_handed = False

    # -- the engine's calls, from its sync thread --

    def resume(self) -> None:
        """Load what was kept: a rollout in progress goes on by its original deadline."""
        self.ledger.load()
        with self.ledger.changing() as kept:
            rollout = kept.rollout
            if rollout and rollout.state == "pending" and self.probe is None:
                kept.live_commit = rollout.commit   # the probe is gone: live at once, as without one
                self._finish(rollout, "live", self._clock())
            elif rollout and (rollout.watching or rollout.rollback_due):
                log.info("rollout: resuming %s (%s)", short(rollout.commit), rollout.state)

    def begin(self, commit: str, previous_live: str | None = None) -> Decision | None:
        """A publish of `commit`; `previous_live` counts only when nothing was ever kept."""
        now = self._clock()
        with self.ledger.changing() as kept:
            old = kept.rollout
            if old and old.state == "pending" and old.commit == commit:
                return None   # the same publish told twice: keep its deadline
            if old and (old.state == "pending" or old.rollback_due):
                self._finish(old, "superseded", now, f"superseded by {short(commit)}")
            target = kept.live_commit
            if target is None and old is None and previous_live and previous_live not in kept.bad:
                target = previous_live
            if self.probe is None:
                kept.live_commit = commit
                kept.rollout = Rollout(commit, "live", now, None, target)
                self._finish(kept.rollout, "live", now)
                return Live(commit)
            kept.rollout = Rollout(commit, "pending", now, now + self.timeout, target, watching=commit)
            self._rollback_handed = False
        log.info("rollout: following %s (live: %s)", short(commit), short(target))
        return None

    def poll(self, now: float | None = None) -> Decision | None:
        """Ask the app once; a decision when the rollout in progress has come to one.

        `now` is wall-clock seconds like the clock's (deadlines are kept across restarts).
        """
        seen = self.probe.observe() if self.probe else None   # outside the lock: network
        now = self._clock() if now is None else now
        with self.ledger.changing() as kept:
            self._seen = seen
            rollout = kept.rollout
            if rollout and rollout.rollback_due and not self._rollback_handed:
                self._rollback_handed = True   # again after a restart: the flip may not have happened
                return Rollback(to=rollout.target or "", bad=rollout.commit, reason=rollout.reason or "")
            if rollout is None or rollout.watching is None or seen is None:
                return None
            if rollout.state == "pending":
                return self._judge_publish(kept, rollout, seen, now)
            return self._judge_rollback(kept, rollout, seen, now)

    def rolled_back(self, commit: str) -> None:
        """The engine has flipped the link back after Rollback(bad=commit)."""
        now = self._clock()
        with self.ledger.changing() as kept:
            rollout = kept.rollout
            if not rollout or rollout.commit != commit or not rollout.rollback_due:
                return
            rollout.rollback_due = False
            rollout.watching, rollout.deadline = rollout.target, now + self.timeout
            self._finish(rollout, "rolled_back", now)
        log.warning("rollout: %s rolled back to %s: %s", short(commit), short(rollout.target),
                    rollout.reason)

    def rollback_failed(self, commit: str, error: str) -> None:
        """The engine could not flip back after Rollback(bad=commit)."""
        now = self._clock()
        with self.ledger.changing() as kept:
            rollout = kept.rollout
            if rollout and rollout.commit == commit and rollout.rollback_due:
                rollout.rollback_due = False
                why = f"rollback to {short(rollout.target)} failed: {one_line(error)}"
                self._finish(rollout, "failed", now, f"{rollout.reason}; {why}")

    def active(self) -> bool:
        """True while a decision may come: poll often."""
        with self.ledger.lock:
            rollout = self.ledger.kept.rollout
            return bool(rollout and (rollout.watching or rollout.rollback_due))

    # -- judging --

    def _judge_publish(self, kept: Kept, rollout: Rollout, seen: Observation, now: float) -> Decision | None:
        commit = rollout.commit
        reason = seen.failure_of(commit)
        if reason is None and seen.live_on(commit):
            kept.live_commit = commit
            self._finish(rollout, "live", now)
            log.info("rollout: %s is live", short(commit))
            return Live(commit)
        if reason is None and now >= (rollout.deadline or now):
            waited = round((rollout.deadline or now) - rollout.started_at)   # the deadline it was given
            reason = f"not live after {waited}s: {seen.why_not(commit)}"
        if reason is None:
            return None
        rollout.reason = reason
        rollout.watching = None
        if self.rollback and rollout.target and not same_commit(rollout.target, commit):
            rollout.state, rollout.rollback_due = "failed", True
            self._rollback_handed = True
            kept.mark_bad(commit, reason, now)
            log.warning("rollout: %s failed: %s; rolling back to %s", short(commit), reason,
                        short(rollout.target))
            return Rollback(to=rollout.target, bad=commit, reason=reason)
        if self.rollback:
            reason = f"{reason}; nothing live to roll back to"
        self._finish(rollout, "failed", now, reason)
        log.warning("rollout: %s failed: %s", short(commit), reason)
        return Failed(commit, reason)

    def _judge_rollback(self, kept: Kept, rollout: Rollout, seen: Observation, now: float) -> Decision | None:
        back_to = rollout.watching or ""
        why = seen.failure_of(back_to)
        if why is None and seen.live_on(back_to):
            rollout.watching = None
            log.info("rollout: %s is live again after the rollback", short(back_to))
            return Live(back_to)
        if why is None and now >= (rollout.deadline or now):
            why = f"not live {round(self.timeout)}s after the rollback: {seen.why_not(back_to)}"
        if why is None:
            return None
        reason = (f"{short(rollout.commit)} failed ({rollout.reason}) and {short(back_to)}, rolled back "
                  f"to, failed too ({why}); not rolling back again")
        rollout.watching = None
        kept.live_commit = None
        self._finish(rollout, "degraded", now, reason)
        log.error("rollout: degraded: %s", reason)
        return Degraded(back_to, reason)

    def _finish(self, rollout: Rollout, result: str, now: float, reason: str | None = None) -> None:
        """Record a result; only after a rollback is a commit (the one rolled back to) still watched."""
        if reason is not None:
            rollout.reason = reason
        rollout.state, rollout.finished_at = result, now
        if result != "rolled_back":
            rollout.watching = None
        self.ledger.record(RolloutResult(rollout.commit, result, rollout.reason,
                                         max(0.0, now - rollout.started_at)))

    # -- what others read --

    def app_reports(self) -> bool:
        """The app says which trees it runs in (gitsync-reload, reachable at the last poll)."""
        with self.ledger.lock:
            return bool(self._seen and self._seen.reachable and self._seen.reports)

    def running_commits(self) -> frozenset[str]:
        """Commits the app reported running at the last poll: their trees must stay."""
        with self.ledger.lock:
            return self._seen.running() if self.app_reports() and self._seen else frozenset()

    def protected_commits(self) -> frozenset[str]:
        """Every commit whose tree must stay: running, live, followed, or a rollback target."""
        with self.ledger.lock:
            rollout = self.ledger.kept.rollout
            keep = {self.ledger.kept.live_commit}
            if rollout and (rollout.watching or rollout.rollback_due):
                keep |= {rollout.commit, rollout.target, rollout.watching}
            return self.running_commits() | frozenset(c for c in keep if c)
