"""The ways of moving CMD to a new tree, one class each, behind one interface.

The loop calls `follow(tree)` when the link has moved while a command serves; True
asks it to start a command in the new tree now. `tend()` runs every tick.

- Restart: stop the command, then start it in the new tree (a gap while it starts).
- SignalOnly: send --signal to the command, which reloads itself (gunicorn's HUP).
- HandOff (--listen): start the new command beside the old one; the old one is told to
  stop, finishing its requests, once the new one is ready (readiness.py).

Every strategy also counts the serving command ready (`tend`), and a flip back to the
commit that serves restarts nothing (`back_to_serving`).
"""

from __future__ import annotations

import logging
import os
import signal

from gitsync import procs
from gitsync.durations import format_duration

from .child import Child, Stopper
from .config import ReloadConfig
from .readiness import Readiness
from .record import Record

logger = logging.getLogger(__name__)


class Restart:
    def __init__(self, config: ReloadConfig, record: Record, stopper: Stopper):
        self.config = config
        self.record = record
        self.stopper = stopper
        self.readiness = Readiness(config)

    def follow(self, tree: str) -> bool:
        serving, self.record.serving = self.record.serving, None
        assert serving is not None  # the loop moves to a new tree only while a command serves
        logger.info("stopping pid %s (%s): %s", serving.pid, serving.sha, f"link moved to {os.path.basename(tree)}")
        self.record.status = self.stopper.end(serving)
        return True

    def back_to_serving(self, serving: Child, tree: str) -> None:
        """The link moved back to the serving command's tree: stop whatever started since."""
        record, starting = self.record, self.record.starting
        logger.info("link moved back to %s, which pid %s serves; nothing to restart",
                    os.path.basename(tree), serving.pid)
        if starting is not None:
            logger.info("stopping pid %s (%s), which is not needed any more", starting.pid, starting.sha)
            self.drain(starting)
            record.starting = None
        record.tree, record.backoff.due = tree, None
        record.back_to_serving()

    def tend(self) -> None:
        self.notice_serving_ready()

    def notice_serving_ready(self) -> None:
        """Count the serving command ready, or (a readiness check not passed in time) failed."""
        serving = self.record.serving
        if serving is None or serving.counted:
            return
        verdict = self.readiness.check(serving)
        if verdict is None:
            return
        ready, why = verdict
        if ready:
            logger.info("%s: ready", why)
            self.record.became_ready(serving)
            return
        logger.warning("pid %s (%s) %s; stopping it", serving.pid, serving.sha, why)
        self.record.serving, ran_for = None, serving.ran_for()
        output = serving.output.text(wait=0) if serving.output is not None else None
        self.record.status = self.stopper.end(serving)
        self.record.attempt_failed(serving.sha, why, output)
        self.schedule_retry(ran_for)

    def schedule_retry(self, ran_for: float) -> None:
        delay = self.record.backoff.schedule(ran_for)
        logger.info("starting it again in %s", format_duration(delay))

    def drain(self, child: Child) -> None:
        self.stopper.signal(child)
        self.record.draining.append(child)


class SignalOnly(Restart):
    def follow(self, tree: str) -> bool:
        # To the leader only, as systemd's reload does: a server's master reloads its
        # workers gracefully, while a worker sent HUP directly just dies.
        serving = self.record.serving
        assert serving is not None  # the loop moves to a new tree only while a command serves
        logger.info("link moved to %s; sending %s to pid %s",
                    os.path.basename(tree), self.config.signal.name, serving.pid)
        if serving.process.poll() is None:
            os.kill(serving.pid, self.config.signal)
        # It reloads into the new tree itself: from now on that is the commit it runs
        # (and a flip back to the old one must signal it again).
        self.record.tree = serving.reloaded = tree
        return False


class HandOff(Restart):
    def follow(self, tree: str) -> bool:
        sha, record = os.path.basename(tree), self.record
        if record.starting is not None:
            logger.info("link moved to %s; stopping pid %s (%s), which was not ready yet",
                        sha, record.starting.pid, record.starting.sha)
            self.drain(record.starting)  # it may be accepting already
            record.starting = None
        serving = record.serving
        assert serving is not None  # the loop moves to a new tree only while a command serves
        logger.info("link moved to %s; starting it beside pid %s (%s)", sha, serving.pid, serving.sha)
        return True

    def tend(self) -> None:
        self.notice_starting()
        self.notice_serving_ready()
        self.notice_drained()

    def notice_starting(self) -> None:
        starting, record = self.record.starting, self.record
        if starting is None:
            return
        if starting.process.poll() is not None:
            record.starting, ran_for = None, starting.ran_for()
            logger.warning(
                "pid %s exited with status %s after %.1fs, before it was ready%s",
                starting.pid, procs.exit_status(starting.process.returncode), ran_for,
                f"; pid {record.serving.pid} ({record.serving.sha}) goes on serving" if record.serving else "",
            )
            record.ended_on_its_own(starting, self.stopper.end(starting))
            self.schedule_retry(ran_for)
            return
        verdict = self.readiness.check(starting)
        if verdict is not None and verdict[0]:
            self.take_over(verdict[1])
        elif record.serving is None:  # the old one ended meanwhile: nothing better to serve
            self.take_over(f"pid {starting.pid} is the only one left", ready=False)
        elif verdict is not None:
            self.not_ready(starting, record.serving, verdict[1])

    def not_ready(self, starting: Child, serving: Child, reason: str) -> None:
        """A failed attempt: the old command goes on serving, the new one stops (drained)."""
        record = self.record
        logger.warning("pid %s (%s) %s; pid %s (%s) goes on serving", starting.pid, starting.sha, reason,
                       serving.pid, serving.sha)
        output = starting.output.text(wait=0) if starting.output is not None else None
        record.starting = None
        self.drain(starting)
        record.attempt_failed(starting.sha, reason, output)
        self.schedule_retry(starting.ran_for())

    def take_over(self, reason: str, ready: bool = True) -> None:
        """The new command serves from now on; the old one stops, finishing its requests.
        Not `ready`: it serves for want of another, and is still checked (notice_serving_ready)."""
        record = self.record
        old, new = record.serving, record.starting
        if new is None:
            return
        record.serving, record.starting = new, None
        if ready:
            record.became_ready(new)
        if old is None:
            logger.info("%s", reason)
            return
        logger.info("%s; stopping pid %s (%s)", reason, old.pid, old.sha)
        self.drain(old)

    def notice_drained(self) -> None:
        for child in list(self.record.draining):
            if procs.group_ended(child.process):
                self.record.draining.remove(child)
                self.stopper.ended(child)
            elif self.stopper.overdue(child):
                self.record.draining.remove(child)
                self.stopper.kill(child)


def stop_signal(config: ReloadConfig) -> signal.Signals:
    """What stops a command for good: with --signal-only the signal means "reload", so SIGTERM."""
    return signal.SIGTERM if config.signal_only else config.signal


def rollover_for(config: ReloadConfig, record: Record, stopper: Stopper) -> Restart:
    """--signal-only wins over --listen: the socket is still handed over, the command reloads itself."""
    if config.signal_only:
        return SignalOnly(config, record, stopper)
    if config.listen is not None:
        return HandOff(config, record, stopper)
    return Restart(config, record, stopper)
