"""The ways of moving CMD to a new tree, one class each, behind one interface.

The loop calls `follow(tree)` when the link has moved while a command serves; True
asks it to start a command in the new tree now. `tend()` runs every tick.

- Restart: stop the command, then start it in the new tree (a gap while it starts).
- SignalOnly: send --signal to the command, which reloads itself (gunicorn's HUP).
- HandOff (--listen): start the new command beside the old one; the old one is told to
  stop, finishing its requests, once the new one sent READY=1 (or after --ready-timeout).
"""

from __future__ import annotations

import logging
import os
import signal

from gitsync import procs
from gitsync.durations import format_duration

from .child import Child, Stopper
from .config import ReloadConfig
from .record import Record

logger = logging.getLogger(__name__)


class Restart:
    def __init__(self, config: ReloadConfig, record: Record, stopper: Stopper):
        self.config = config
        self.record = record
        self.stopper = stopper

    def follow(self, tree: str) -> bool:
        serving, self.record.serving = self.record.serving, None
        logger.info("stopping pid %s (%s): %s", serving.pid, serving.sha, f"link moved to {os.path.basename(tree)}")
        self.record.status = self.stopper.end(serving)
        return True

    def tend(self) -> None:
        pass


class SignalOnly(Restart):
    def follow(self, tree: str) -> bool:
        # To the leader only, as systemd's reload does: a server's master reloads its
        # workers gracefully, while a worker sent HUP directly just dies.
        serving = self.record.serving
        logger.info("link moved to %s; sending %s to pid %s",
                    os.path.basename(tree), self.config.signal.name, serving.pid)
        if serving.process.poll() is None:
            os.kill(serving.pid, self.config.signal)
        self.record.tree = tree
        return False


class HandOff(Restart):
    def follow(self, tree: str) -> bool:
        sha, record = os.path.basename(tree), self.record
        if record.starting is not None:
            logger.info("link moved to %s; stopping pid %s (%s), which was not ready yet",
                        sha, record.starting.pid, record.starting.sha)
            self.drain(record.starting)  # it may be accepting already
            record.starting = None
        logger.info("link moved to %s; starting it beside pid %s (%s)", sha, record.serving.pid, record.serving.sha)
        return True

    def tend(self) -> None:
        self.notice_starting()
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
            delay = record.backoff.schedule(ran_for)
            logger.info("starting it again in %s", format_duration(delay))
        elif starting.ready:
            self.take_over(f"pid {starting.pid} is ready")
        elif record.serving is None:
            self.take_over(f"pid {starting.pid} is the only one left")
        elif starting.ran_for() >= self.config.ready_timeout:
            self.take_over(f"pid {starting.pid} sent no READY=1 in {format_duration(self.config.ready_timeout)}")

    def take_over(self, reason: str) -> None:
        """The new command serves from now on; the old one stops, finishing its requests."""
        record = self.record
        old, record.serving, record.starting = record.serving, record.starting, None
        if old is None:
            logger.info("%s", reason)
            return
        logger.info("%s; stopping pid %s (%s)", reason, old.pid, old.sha)
        self.drain(old)

    def drain(self, child: Child) -> None:
        self.stopper.signal(child)
        self.record.draining.append(child)

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
