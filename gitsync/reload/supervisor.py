"""The loop: keep CMD running in the link's current tree. Lifecycle and signals only.

Each tick it waits for the link (watch.py) or, while a new command starts beside the
old one, for that command's READY=1; then it looks at the commands (record.py), lets
the rollover strategy move them along (rollover.py), and starts one when due through
the launcher (launcher.py). With --prepare, a tree whose content is new is prepared
first (prepare.py), while what runs goes on running: the loop asks each tick until the
prepare has ended, and only then moves the commands along. A signal handler only sets
an event, and every wait is event.wait(timeout), so SIGTERM ends any wait at once. At
the end of each tick the record's snapshot goes to the status board (status.py), which
the API answers from.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading

from gitsync import procs
from gitsync.durations import format_duration

from .child import Stopper
from .config import ReloadConfig
from .launcher import NotStarted, StartFailed, launcher_for
from .prepare import preparer_for
from .record import Record
from .rollover import rollover_for, stop_signal
from .status import Board
from .systemd import NoActivation
from .watch import Debounce, LinkWatcher, resolve_tree, warn_if_not_a_symlink

logger = logging.getLogger(__name__)


class Supervisor:
    """Keep CMD running in the link's current tree until SIGTERM, SIGINT or SIGHUP."""

    def __init__(self, config: ReloadConfig, activation: NoActivation, board: Board | None = None):
        self.config = config
        self.board = board or Board()  # what GET /api/v1/status answers from
        self.activation = activation  # with --listen: the socket and each command's NOTIFY_SOCKET
        self.should_exit = threading.Event()
        self.force_exit = threading.Event()  # a second SIGTERM/SIGINT: no grace period
        self.record = Record()
        self.launcher = launcher_for(config, activation, self.should_exit)
        self.preparer = preparer_for(config, self.launcher.base_environ())  # --prepare: before a start
        self.stopper = Stopper(stop_signal(config), config.grace, self.force_exit, self.our_processes)
        self.rollover = rollover_for(config, self.record, self.stopper)
        self.watcher = LinkWatcher(config.link, self.should_exit)
        self.debounce = Debounce(config.debounce)
        self.waiting_logged = False
        self.started_once = False  # a command has run: a later tree lacking it is retried
        self.missing_command: str | None = None  # CMD does not exist at the first start: exit 127
        self.publish()  # the API answers from the first request on

    @property
    def fatal(self) -> str | None:
        """Why gitsync-reload gave up (exit 2, or 127 for a command that does not exist)."""
        return self.missing_command or self.launcher.fatal

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.handle_exit)

    def handle_exit(self, signum: int, frame: object) -> None:
        if self.should_exit.is_set():
            self.force_exit.set()
        self.should_exit.set()

    def run(self) -> int:
        procs.become_subreaper()
        warn_if_not_a_symlink(self.config.link)
        try:
            self.launcher.tend()  # a spare imports while the watch is set up and the link awaited
            while not self.should_exit.is_set():
                if self.wait():
                    self.debounce.touch()
                self.tend()
                self.publish()
        finally:
            self.record.stopping = True
            self.publish()
            self.preparer.close()
            self.launcher.close()
            self.stop_all("shutting down")  # also on an unexpected error: never leave CMD behind
            self.watcher.close()
            self.activation.close()
        if self.missing_command:
            return 127
        return 2 if self.fatal else self.record.status

    def command_is_missing(self, tree: str) -> bool:
        """Before anything ever ran: a CMD that does not exist ends gitsync-reload (exit 127)
        instead of being retried for ever. Afterwards a tree without it is a failed attempt."""
        program = self.config.command[0]
        path = os.path.join(tree, program) if "/" in program else None
        search = self.config.environ.get("PATH", os.defpath)
        found = os.path.exists(path) if path else shutil.which(program, path=search) is not None
        if found:
            return False
        where = f"in {tree}" if path else "on PATH"
        self.missing_command = f"cannot run {program}: no such file {where}"
        self.should_exit.set()
        return True

    def wait(self) -> bool:
        """Up to a tick; True if the link may have moved."""
        starting = self.record.starting
        if starting is not None and starting.notices is not None:
            return self.watcher.touched_or_readable(starting.notices.sock)
        return self.watcher.touched()

    def publish(self) -> None:
        tree = resolve_tree(self.config.link)
        self.record.target = os.path.basename(tree) if tree is not None else None
        self.board.publish(self.record.snapshot())

    def our_processes(self) -> list:
        return ([child.process for child in self.record.children()] + self.launcher.processes()
                + self.preparer.processes())

    def tend(self) -> None:
        self.launcher.tend()
        procs.reap_orphans(self.our_processes())
        self.read_notices()
        self.notice_exit()
        self.rollover.tend()
        if self.debounce.settled():
            self.follow_link()
        elif self.preparer.busy:
            self.move_to(resolve_tree(self.config.link))  # the prepare may have ended
        if self.start_due():
            self.start()

    def read_notices(self) -> None:
        for child in self.record.children():
            if not child.read_notices():
                continue
            if child is self.record.serving:
                logger.info("pid %s is ready", child.pid)
            self.launcher.child_ready()

    def notice_exit(self) -> None:
        record = self.record
        if record.serving is None or record.serving.process.poll() is None:
            return
        child, record.serving = record.serving, None
        ran_for = child.ran_for()
        logger.warning("pid %s exited with status %s after %.1fs",
                       child.pid, procs.exit_status(child.process.returncode), ran_for)
        record.ended_on_its_own(child, self.stopper.end(child))  # the rest of its group goes too
        if record.starting is None:
            self.schedule_restart(ran_for)  # else the one starting takes over

    def schedule_restart(self, ran_for: float) -> None:
        delay = self.record.backoff.schedule(ran_for)
        logger.info("starting it again in %s", format_duration(delay))

    def follow_link(self) -> None:
        tree = resolve_tree(self.config.link)
        if tree is None or tree == self.record.tree:
            if tree is not None:
                self.preparer.cancel(f"the link is back at {os.path.basename(tree)}")
            return  # clean-up, temporary links, or a link that went away: keep what runs
        if self.record.backoff.due is not None:
            logger.info("link moved to %s; starting now instead of waiting", os.path.basename(tree))
            self.record.backoff.due = None
        self.move_to(tree)

    def move_to(self, tree: str | None) -> None:
        """Prepare first (asked again each tick while it runs), then the rollover."""
        if tree is None or tree == self.record.tree or self.record.serving is None:
            return  # start_due(): nothing runs, so it starts at once
        if tree == self.record.serving.runs:
            # e.g. a rollback while the new one crash-loops: the one serving goes on
            self.rollover.back_to_serving(self.record.serving, tree)
            return
        if self.preparer.environ_for(tree, self.record) is None:
            return  # the command serves on while the prepare runs, and if it failed
        if self.rollover.follow(tree):
            self.start()

    def start_due(self) -> bool:
        if self.should_exit.is_set() or self.record.starting is not None:
            return False
        if self.record.backoff.due is not None:
            return self.record.backoff.is_due()
        return self.record.serving is None

    def start(self) -> None:
        tree = resolve_tree(self.config.link)
        if tree is None:
            self.log_waiting()
            return
        self.waiting_logged = False
        chosen = self.preparer.start_in(tree, self.record)
        if chosen is None:
            return  # its prepare runs (asked again next tick), or failed with nothing to go back to
        tree, extra = chosen
        if not self.started_once and self.command_is_missing(tree):
            return
        self.record.tree, self.record.backoff.due = tree, None
        self.record.attempt_starting(os.path.basename(tree))
        try:
            child = self.launcher.start(tree, extra)
        except NotStarted:
            return
        except StartFailed as failed:
            logger.error("cannot start %s in %s: %s", self.config.command[0], tree, failed.reason)
            self.record.attempt_failed(os.path.basename(tree), failed.reason, failed.output)
            self.schedule_restart(ran_for=0.0)
            return
        except OSError as error:
            logger.error("cannot start %s in %s: %s", self.config.command[0], tree, error)
            self.record.could_not_start(error, os.path.basename(tree))
            self.schedule_restart(ran_for=0.0)
            return
        self.started_once = True
        if self.record.serving is None:
            self.record.serving = child
        else:
            self.record.starting = child
        logger.info("started pid %s in %s (GITSYNC_HASH=%s%s): %s", child.pid, tree, child.sha,
                    ", warm" if child.warm else "", " ".join(self.config.command))
        self.preparer.used([tree, *(other.tree for other in self.record.children())])

    def stop_all(self, reason: str) -> None:
        """Signal every command at once, then wait for each; the status is the serving one's."""
        record = self.record
        for child in (record.starting, record.serving):
            if child is not None:
                logger.info("stopping pid %s (%s): %s", child.pid, child.sha, reason)
                self.stopper.signal(child)
        for child in (record.starting, *record.draining):
            if child is not None:
                self.stopper.finish(child)
        record.starting, record.draining = None, []
        if record.serving is not None:
            record.status = self.stopper.finish(record.serving)
            record.serving = None

    def log_waiting(self) -> None:
        if not self.waiting_logged:
            logger.info("waiting for %s to appear (a symlink to a published tree)", self.config.link)
            self.waiting_logged = True
