"""The loop: keep CMD running in the link's current tree. Lifecycle and signals only.

Each tick it waits for the link (watch.py) or, while a new command starts beside the
old one, for that command's READY=1; then it looks at the commands (record.py), lets
the rollover strategy move them along (rollover.py), and starts one when due through
the launcher (launcher.py). A signal handler only sets an event, and every wait is
event.wait(timeout), so SIGTERM ends any wait at once.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Mapping

from gitsync import procs
from gitsync.durations import format_duration

from .child import Child, Stopper
from .config import ReloadConfig
from .launcher import NotStarted, launcher_for
from .record import Record
from .rollover import rollover_for, stop_signal
from .systemd import NoActivation, Notices
from .watch import LinkWatcher, resolve_tree

logger = logging.getLogger(__name__)

STARTING_TICK = 0.01  # how often the link is looked at while a new command starts beside the old one


class Supervisor:
    def __init__(self, config: ReloadConfig, activation: NoActivation):
        self.config = config
        self.activation = activation  # with --listen: the socket and each command's NOTIFY_SOCKET
        self.should_exit = threading.Event()
        self.force_exit = threading.Event()  # a second SIGTERM/SIGINT: no grace period
        self.record = Record()
        self.launcher = launcher_for(config, activation, self.should_exit)
        self.stopper = Stopper(stop_signal(config), config.grace, self.force_exit, self.our_processes)
        self.rollover = rollover_for(config, self.record, self.stopper)
        self.watcher = LinkWatcher(config.link, self.should_exit)
        self.touched_at: float | None = None  # the latest link event not yet acted on
        self.link_seen: str | None = None  # the link's target, as wait_for_ready() last saw it
        self.waiting_logged = False

    @property
    def fatal(self) -> str | None:
        """Why gitsync-reload gave up (exit 2)."""
        return self.launcher.fatal

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.handle_exit)

    def handle_exit(self, signum: int, frame: object) -> None:
        if self.should_exit.is_set():
            self.force_exit.set()
        self.should_exit.set()

    def run(self) -> int:
        procs.become_subreaper()
        self.warn_if_not_a_symlink()
        try:
            self.launcher.tend()  # a spare imports while the watch is set up and the link awaited
            while not self.should_exit.is_set():
                if self.wait():
                    self.touched_at = time.monotonic()
                self.tend()
        finally:
            self.launcher.close()
            self.stop_all("shutting down")  # also on an unexpected error: never leave CMD behind
            self.watcher.close()
            self.activation.close()
        return 2 if self.fatal else self.record.status

    def wait(self) -> bool:
        starting = self.record.starting
        if starting is not None and starting.notices is not None:
            return self.wait_for_ready(starting.notices)
        return self.watcher.touched()

    def wait_for_ready(self, notices: Notices) -> bool:
        """While a new command starts: wake as soon as it writes to its NOTIFY_SOCKET, and
        look at the link every STARTING_TICK (the watcher keeps its events meanwhile)."""
        select.select([notices.sock], [], [], STARTING_TICK)
        tree = resolve_tree(self.config.link)
        moved, self.link_seen = tree != self.link_seen, tree
        return moved

    def our_processes(self) -> list:
        return [child.process for child in self.record.children()] + self.launcher.processes()

    def tend(self) -> None:
        self.launcher.tend()
        procs.reap_orphans(self.our_processes())
        self.read_notices()
        self.notice_exit()
        self.rollover.tend()
        if self.link_settled():
            self.follow_link()
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

    def link_settled(self) -> bool:
        # A burst of flips keeps pushing touched_at; act once it has been quiet for --debounce.
        if self.touched_at is None or time.monotonic() - self.touched_at < self.config.debounce:
            return False
        self.touched_at = None
        return True

    def follow_link(self) -> None:
        tree = resolve_tree(self.config.link)
        if tree is None or tree == self.record.tree:
            return  # clean-up, temporary links, or a link that went away: keep what runs
        if self.record.backoff.due is not None:
            logger.info("link moved to %s; starting now instead of waiting", os.path.basename(tree))
            self.record.backoff.due = None
        if self.record.serving is None:
            return  # start_due(): nothing runs, so it starts at once
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
        self.record.tree, self.record.backoff.due = tree, None
        try:
            child = self.spawn(tree)
        except NotStarted:
            return
        except OSError as error:
            logger.error("cannot start %s in %s: %s", self.config.command[0], tree, error)
            self.record.could_not_start(error)
            self.schedule_restart(ran_for=0.0)
            return
        if self.record.serving is None:
            self.record.serving = child
        else:
            self.record.starting = child
        logger.info("started pid %s in %s (GITSYNC_HASH=%s%s): %s", child.pid, tree, child.sha,
                    ", warm" if child.warm else "", " ".join(self.config.command))

    def spawn(self, tree: str) -> Child:
        """Start CMD in tree, with GITSYNC_HASH and (--listen) its own NOTIFY_SOCKET."""
        notices, environ = self.activation.prepare()
        try:
            process, warm = self.launcher.launch(tree, {"GITSYNC_HASH": os.path.basename(tree), **environ})
        except BaseException:
            if notices is not None:
                notices.close()
            raise
        return Child(process, tree, time.monotonic(), notices, warm=warm)

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

    def warn_if_not_a_symlink(self) -> None:
        if os.path.lexists(self.config.link) and not os.path.islink(self.config.link):
            logger.warning("%s is not a symlink; it will never flip", self.config.link)
