"""--prepare: the directory a tree's dependencies go in, made once per content.

The key is a hash of the tree's --prepare-key files (a missing file counts, as missing)
and of the --prepare command line. DIR/<key> is made once: the command runs in the new
tree with GITSYNC_CACHE naming an empty DIR/.prepare-<key>-<random>, and that directory
is renamed to DIR/<key> only when the command exits 0; a prepare that fails, times out or
is killed with gitsync-reload never leaves a half-made directory under the real name.
A key whose prepare failed is remembered (while gitsync-reload runs) and not prepared
again: the next commit with the same files fails the same way at once.

The loop never waits for a prepare: it calls `check(tree, prev)` each tick, which starts
the command (its own process group, gitsync.procs) and answers "busy" until it ended.
Its output goes to our log line by line; the last line is the reason when it fails.
`close()` kills it at once (shutdown). `used(trees)` removes the directories of keys
no command uses, keeping the KEEP most recently used.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gitsync import procs
from gitsync.durations import format_duration

from . import cache
from .config import ReloadConfig
from .record import Record

logger = logging.getLogger(__name__)

LAST_LINE_MAX = 300  # characters of the last output line kept for the reason
KILL_WAIT = 5.0  # for the leader after SIGKILL
READER_WAIT = 2.0  # for the last output after the leader exited
VARIABLES = ("GITSYNC_CACHE", "GITSYNC_HASH", "GITSYNC_PREV_HASH")  # replaced in the command's words
_NAMES = "|".join(VARIABLES)
_REFERENCE = re.compile(rf"\$(?:\{{({_NAMES})\}}|({_NAMES})(?![A-Za-z0-9_]))")  # $NAME or ${NAME}


@dataclass(frozen=True)
class Outcome:
    state: str  # "ready", "busy" (the prepare runs) or "failed"
    cache: str | None = None  # ready: DIR/<key>, the command's GITSYNC_CACHE
    reason: str | None = None  # failed: "prepare failed: <last line>", "prepare timed out after 10m"


BUSY = Outcome("busy")
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def expand(words: Iterable[str], values: Mapping[str, str]) -> list[str]:
    """Replace $GITSYNC_CACHE, ${GITSYNC_HASH}, ... in each word; nothing else (no shell runs)."""
    return [_REFERENCE.sub(lambda match: values[match.group(1) or match.group(2)], word) for word in words]


def redacted(argv: Iterable[str]) -> str:
    """The command line for the log, without the credentials of a URL in it (an index URL)."""
    return " ".join(_CREDENTIALS.sub(r"\1***@", word) for word in argv)


class Job:
    """One prepare command running in a tree for a key, into its own temporary directory."""

    def __init__(self, argv: list[str], tree: str, key: str, temp: str, lock: int,
                 environ: Mapping[str, str], timeout: float):
        self.tree, self.key, self.temp, self.lock = tree, key, temp, lock
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.last_line = ""
        self.process = procs.spawn_group(argv, cwd=tree, env=environ, output=subprocess.PIPE)
        self.reader = threading.Thread(target=self.relay, name=f"prepare-{self.process.pid}", daemon=True)
        self.reader.start()

    def relay(self) -> None:
        """Its output to our log as it comes; keep the last line that says something."""
        assert self.process.stdout is not None  # spawned with output=PIPE
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                self.last_line = line.strip()[:LAST_LINE_MAX]
                logger.info("prepare: %s", line)
        self.process.stdout.close()

    def result(self) -> str | None:
        """None while it runs; "" once it succeeded; else why it failed, one line."""
        if self.process.poll() is None:
            if time.monotonic() < self.deadline:
                return None
            self.kill()
            return f"prepare timed out after {format_duration(self.timeout)}"
        procs.kill_group(self.process)  # anything it left running in its group goes too
        self.reader.join(READER_WAIT)
        if self.process.returncode == 0:
            return ""
        return f"prepare failed: {self.last_line or procs.describe_exit(self.process.returncode)}"

    def kill(self) -> None:
        procs.kill_group(self.process)
        try:
            self.process.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            logger.error("prepare pid %s survived SIGKILL for %s", self.process.pid,
                         format_duration(KILL_WAIT))
        self.reader.join(READER_WAIT)

    def discard(self) -> None:
        """Kill it if it runs, and remove its temporary directory."""
        if self.process.poll() is None:
            self.kill()
        os.close(self.lock)
        cache.remove(self.temp)


class Preparer:
    """Answers, for a tree, whether its content is prepared; prepares it when not."""

    def __init__(self, config: ReloadConfig, environ: Mapping[str, str]):
        self.config = config
        self.environ = environ  # the command's base environment
        self.keys: dict[str, str] = {}  # tree -> key (a published tree never changes)
        self.failed: dict[str, str] = {}  # key -> why its prepare failed
        self.job: Job | None = None
        self.reported: str | None = None  # the last tree refused for a key that failed before
        self.swept = False  # leftovers of an earlier gitsync-reload removed

    @property
    def busy(self) -> bool:
        return self.job is not None

    def processes(self) -> list[subprocess.Popen]:
        return [self.job.process] if self.job is not None else []

    def environ_for(self, tree: str, record: Record) -> dict[str, str] | None:
        """What a start in tree adds to CMD's environment once its content is prepared;
        None while the prepare runs (ask again) or after it failed (a failed attempt)."""
        outcome = self.check(tree, record.serving.sha if record.serving is not None else "")
        if outcome.reason is not None:
            record.attempt_failed(os.path.basename(tree), outcome.reason)
        return {"GITSYNC_CACHE": outcome.cache} if outcome.cache is not None else None

    def start_in(self, tree: str, record: Record) -> tuple[str, dict[str, str]] | None:
        """Where to start CMD: tree once prepared. While nothing serves and tree's prepare
        runs or failed, the tree CMD last ran in, if prepared: a crash meanwhile does not
        take the old app away."""
        extra = self.environ_for(tree, record)
        if extra is not None:
            return tree, extra
        last = record.tree
        if record.serving is not None or last in (None, tree) or not os.path.isdir(last):
            return None
        path = self.prepared(last)
        if path is None:
            return None
        logger.info("starting it again in %s, where it ran before: %s", os.path.basename(last),
                    f"{os.path.basename(tree)} is being prepared" if self.busy else record.failure)
        return last, {"GITSYNC_CACHE": path}

    def prepared(self, tree: str) -> str | None:
        """DIR/<key> of tree if it is made; never starts or stops a prepare."""
        path = os.path.join(self.config.cache_dir, self.key_of(tree))
        if not os.path.isdir(path):
            return None
        cache.touch(path)  # most recently used: kept longest
        return path

    def key_of(self, tree: str) -> str:
        if tree not in self.keys:
            self.keys[tree] = cache.content_key(tree, self.config.prepare_key, self.config.prepare)
        return self.keys[tree]

    def check(self, tree: str, prev: str) -> Outcome:
        """Ready (DIR/<key>), busy (its prepare runs; ask again) or failed (why)."""
        key = self.key_of(tree)
        if self.job is not None and self.job.key != key:
            self.cancel(f"the link moved on to {os.path.basename(tree)}")
        path = self.prepared(tree)
        if path is not None:
            return Outcome("ready", cache=path)
        path = os.path.join(self.config.cache_dir, key)
        if key in self.failed:
            self.report_refusal(tree, key)
            return Outcome("failed", reason=self.failed[key])
        if self.job is None:
            return self.begin(tree, key, prev)
        return self.follow(self.job, path)

    def begin(self, tree: str, key: str, prev: str) -> Outcome:
        try:
            self.sweep()
            temp, lock = cache.make_temp(self.config.cache_dir, key)
        except OSError as error:
            return self.fail(key, f"prepare failed: cannot make a directory in {self.config.cache_dir}: "
                                  f"{error.strerror or error}")
        values = {"GITSYNC_CACHE": temp, "GITSYNC_HASH": os.path.basename(tree), "GITSYNC_PREV_HASH": prev}
        argv = expand(self.config.prepare, values)
        try:
            environ = {**self.environ, **values}
            self.job = Job(argv, tree, key, temp, lock, environ, self.config.prepare_timeout)
        except OSError as error:
            os.close(lock)
            cache.remove(temp)
            return self.fail(key, f"prepare failed: cannot run {argv[0]}: {error.strerror or error}")
        logger.info("preparing %s in %s (pid %s, key %s): %s",
                    os.path.basename(tree), tree, self.job.process.pid, key, redacted(argv))
        return BUSY

    def follow(self, job: Job, path: str) -> Outcome:
        result = job.result()
        if result is None:
            return BUSY
        self.job = None
        if result:
            job.discard()
            logger.warning("%s for %s (key %s)", result, os.path.basename(job.tree), job.key)
            self.reported = job.tree  # said just now
            return self.fail(job.key, result)
        try:
            os.rename(job.temp, path)
        except OSError:
            if not os.path.isdir(path):  # not another gitsync-reload's directory beating ours
                job.discard()
                return self.fail(job.key, f"prepare failed: cannot rename it to {path}")
        job.discard()  # unlocks; the temporary name is gone unless another one won
        logger.info("prepared %s in %.2fs: GITSYNC_CACHE=%s", os.path.basename(job.tree),
                    time.monotonic() - job.started, path)
        return Outcome("ready", cache=path)

    def fail(self, key: str, reason: str) -> Outcome:
        self.failed[key] = reason
        return Outcome("failed", reason=reason)

    def report_refusal(self, tree: str, key: str) -> None:
        if tree != self.reported:
            self.reported = tree
            logger.warning("not preparing %s: its %s are as in a prepare that failed (%s); waiting for a "
                           "commit that changes them", os.path.basename(tree),
                           ",".join(self.config.prepare_key), self.failed[key])

    def cancel(self, why: str) -> None:
        job, self.job = self.job, None
        if job is not None:
            logger.info("stopping the prepare of %s (pid %s): %s",
                        os.path.basename(job.tree), job.process.pid, why)
            job.discard()

    def close(self) -> None:
        self.cancel("shutting down")

    def used(self, trees: Iterable[str]) -> None:
        """Commands run in these trees now: remove other keys' directories but the KEEP newest."""
        in_use = {self.keys[tree] for tree in trees if tree in self.keys}
        self.keys = {tree: key for tree, key in self.keys.items() if key in in_use}
        for path in cache.unused(self.config.cache_dir, in_use):
            logger.info("removing %s: no command uses it", path)
            cache.remove(path)

    def sweep(self) -> None:
        """Once: remove what a gitsync-reload that died left behind."""
        if not self.swept:
            cache.sweep(self.config.cache_dir)
            self.swept = True



class NoPrepare:
    """Without --prepare: every tree is ready at once, and CMD gets no GITSYNC_CACHE."""

    busy = False

    def environ_for(self, tree: str, record: Record) -> dict[str, str] | None:
        return {}

    def start_in(self, tree: str, record: Record) -> tuple[str, dict[str, str]] | None:
        return tree, {}

    def processes(self) -> list[subprocess.Popen]:
        return []

    def cancel(self, why: str) -> None:
        pass

    def close(self) -> None:
        pass

    def used(self, trees: Iterable[str]) -> None:
        pass


def preparer_for(config: ReloadConfig, environ: Mapping[str, str]) -> Preparer | NoPrepare:
    return Preparer(config, environ) if config.prepare else NoPrepare()
