"""Did the link's name change? One non-recursive watch of the link's directory.

One inotify watch: checkouts into .worktrees and the removal of old trees are never
seen, and a flip (a temporary link renamed over the link) arrives as an event on the
link's name. The directory may appear later; the watch then starts on it. (Watching
the tree itself, or the directory recursively, misses flips or restarts onto old code:
see FINDINGS.md.) The only module that imports watchfiles.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Generator

import watchfiles

logger = logging.getLogger(__name__)

TICK = 0.05  # longest touched() waits
STARTING_TICK = 0.01  # how often the link is looked at while a new command starts beside the old one
WATCH_STEP_MS = 10  # watchfiles batches events this long; a flip is seen in ~2 steps (~15 ms)
WATCH_RETRY = 1.0  # after the watch could not be set up


def resolve_tree(link: str) -> str | None:
    """The directory the link points at right now, or None while there is none."""
    tree = os.path.realpath(link)
    return tree if os.path.isdir(tree) else None


def directory_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino) if os.path.isdir(path) else None


def warn_if_not_a_symlink(link: str) -> None:
    if os.path.lexists(link) and not os.path.islink(link):
        logger.warning("%s is not a symlink; it will never flip", link)


class Debounce:
    """A burst of flips keeps pushing the last touch; it settles once quiet for `quiet` seconds."""

    def __init__(self, quiet: float):
        self.quiet = quiet
        self.touched_at: float | None = None  # the latest link event not yet acted on

    def touch(self) -> None:
        self.touched_at = time.monotonic()

    def settled(self) -> bool:
        if self.touched_at is None or time.monotonic() - self.touched_at < self.quiet:
            return False
        self.touched_at = None
        return True


class LinkWatcher:
    def __init__(self, link: str, stop: threading.Event):
        self.link = link
        self.directory, self.name = os.path.split(link)
        self.stop = stop  # set: every wait ends at once
        self.watcher: Generator[set, None, None] | None = None
        self.watched: tuple[int, int] | None = None  # (device, inode) of the watched directory
        self.seen: str | None = None  # the link's target, as touched_or_readable() last saw it

    def touched_or_readable(self, sock: socket.socket) -> bool:
        """While a new command starts: wake as soon as sock (its NOTIFY_SOCKET) has data, and
        look at the link every STARTING_TICK (the watch keeps its events meanwhile)."""
        select.select([sock], [], [], STARTING_TICK)
        tree = resolve_tree(self.link)
        moved, self.seen = tree != self.seen, tree
        return moved

    def touched(self) -> bool:
        """Wait up to about TICK; True if something happened to the link's name."""
        if self.watcher is None:
            return self.open_watcher()
        try:
            changes = next(self.watcher)
        except StopIteration:
            return False
        if self.directory_replaced():
            # A watch follows the inode: a directory removed and made again is silent.
            logger.warning("%s was removed or replaced; watching it again when it exists", self.directory)
            self.close()
            return True
        return bool(changes)

    def open_watcher(self) -> bool:
        self.watched = directory_id(self.directory)
        if self.watched is None:
            self.stop.wait(TICK)
            return False
        logger.info("watching %s for changes to %s", self.directory, self.name)
        watcher = self.watcher = watchfiles.watch(
            self.directory,
            watch_filter=self.is_link,
            recursive=False,
            step=WATCH_STEP_MS,
            rust_timeout=int(TICK * 1000),
            yield_on_timeout=True,
            stop_event=self.stop,
            raise_interrupt=False,
        )
        try:
            next(watcher)  # the watch begins when the generator first runs
        except StopIteration:
            return False
        except (OSError, RuntimeError) as error:  # gone meanwhile, or not ours to read
            logger.warning("cannot watch %s: %s; trying again", self.directory, error)
            self.close()
            self.stop.wait(WATCH_RETRY)
            return False
        return True  # look at the link now: it may have moved before the watch began

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.watcher = None

    def directory_replaced(self) -> bool:
        return directory_id(self.directory) != self.watched

    def is_link(self, change: watchfiles.Change, path: str) -> bool:
        return os.path.basename(path) == self.name
