"""gitsync-reload: run a command inside the published tree, and again in the next one.

    gitsync-reload --link /repo/app -- python app.py

The sidecar publishes each commit as <root>/.worktrees/<sha> and renames a new
relative symlink over <root>/<link>. This program starts the command with its
working directory at the link's target (resolved at every start, so it never
keeps running in a tree that is about to be deleted) and GITSYNC_HASH set to the
published commit, and restarts it when the link moves.

Shape: `Supervisor` owns the child's process group and the signals;
`LinkWatcher` answers the one question "did the link's name change?" by
watching the link's directory, non-recursively, with watchfiles.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import watchfiles

from gitsync.durations import format_duration, parse_duration

logger = logging.getLogger(__name__)

PROG = "gitsync-reload"
ENV_PREFIX = "GITSYNC_RELOAD_"
DEFAULT_SIGNAL = signal.SIGTERM
DEFAULT_RELOAD_SIGNAL = signal.SIGHUP  # with --signal-only: what servers reload on
DEFAULT_GRACE = 10.0
DEFAULT_DEBOUNCE = 0.05

TICK = 0.05  # longest the loop sleeps before looking at the child again
WATCH_STEP_MS = 20  # watchfiles batches events this long; a flip is seen in ~2 steps
WATCH_RETRY = 1.0  # after the watch could not be set up
BACKOFF_FIRST = 0.5  # delay before restarting a command that ended on its own...
BACKOFF_MAX = 30.0  # ...doubling up to this...
HEALTHY_RUN = 10.0  # ...and back to the first delay after a run this long
KILL_WAIT = 5.0  # how long to wait for the leader after SIGKILL
GROUP_POLL = 0.01  # a process group has nothing to wait on; look this often while it stops
PR_SET_CHILD_SUBREAPER = 36

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}

EPILOG = """\
examples:
  # restart the app in the new tree on every publish
  gitsync-reload --link /repo/app -- python app.py

  # waitress drains on SIGINT; give it 30s before SIGKILL
  gitsync-reload --link /repo/app --signal INT --grace 30s -- python serve.py

  # gunicorn swaps its workers itself on HUP: signal, do not restart
  gitsync-reload --link /repo/app --signal-only -- gunicorn --chdir /repo/app app:app

  # the same settings from the environment (a flag on the command line wins)
  GITSYNC_RELOAD_LINK=/repo/app GITSYNC_RELOAD_GRACE=30s gitsync-reload -- python app.py

The command runs in its own process group: stopping it signals the whole group,
then sends SIGKILL to the group after the grace period. A command that exits on its
own is started again after 0.5s, 1s, 2s, ... up to 30s (back to 0.5s after a 10s
run); a publish during that wait starts it at once. SIGTERM, SIGINT or SIGHUP
stops the command and exits with its status (128+N if signal N ended it); a second
one skips the grace period.
"""


class ConfigError(Exception):
    """A bad or missing setting; the message is the one line shown to the user."""


@dataclass(frozen=True)
class ReloadConfig:
    link: str  # absolute path of the symlink; its target's last part is the commit
    command: tuple[str, ...]
    signal: signal.Signals  # stops the command; with signal_only, tells it to reload
    grace: float
    debounce: float
    signal_only: bool
    environ: Mapping[str, str] = field(repr=False, compare=False)  # the command's base environment


def build_config(argv: Sequence[str], environ: Mapping[str, str]) -> ReloadConfig:
    """The one place that reads flags and GITSYNC_RELOAD_* variables; raise ConfigError."""
    args = _parser().parse_args(list(argv))

    def setting(name: str) -> tuple[object, str]:
        flag_value = getattr(args, name.replace("-", "_"))
        if flag_value is not None:
            return flag_value, f"--{name}"
        env_name = ENV_PREFIX + name.upper().replace("-", "_")
        return environ.get(env_name), f"--{name} ({env_name})"

    signal_only = _parse_bool(*setting("signal-only"))
    default_signal = DEFAULT_RELOAD_SIGNAL if signal_only else DEFAULT_SIGNAL
    return ReloadConfig(
        link=_parse_link(*setting("link")),
        command=_parse_command(args.command),
        signal=_parse_signal(*setting("signal"), default=default_signal),
        grace=_parse_seconds(*setting("grace"), default=DEFAULT_GRACE),
        debounce=_parse_seconds(*setting("debounce"), default=DEFAULT_DEBOUNCE),
        signal_only=signal_only,
        environ=MappingProxyType(dict(environ)),
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, raised instead of printing usage and exiting
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [--link PATH] [--signal NAME] [--grace DURATION] "
        "[--debounce DURATION] [--signal-only] -- CMD ARGS...",
        description="Run CMD inside the tree the gitsync link points at; restart it when the link flips.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--link",
        metavar="PATH",
        help="the symlink gitsync publishes, e.g. /repo/app (env GITSYNC_RELOAD_LINK; required)",
    )
    parser.add_argument(
        "--signal",
        metavar="NAME",
        help="signal that stops CMD: TERM, SIGTERM, INT, HUP or a number "
        "(env GITSYNC_RELOAD_SIGNAL; default TERM, or HUP with --signal-only)",
    )
    parser.add_argument(
        "--grace",
        metavar="DURATION",
        help="time CMD gets to exit after the signal before SIGKILL, e.g. 500ms, 10s "
        f"(env GITSYNC_RELOAD_GRACE; default {format_duration(DEFAULT_GRACE)})",
    )
    parser.add_argument(
        "--debounce",
        metavar="DURATION",
        help="wait this long after the last flip of a burst, then restart once onto the newest tree "
        f"(env GITSYNC_RELOAD_DEBOUNCE; default {format_duration(DEFAULT_DEBOUNCE)})",
    )
    parser.add_argument(
        "--signal-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on a flip, send the signal to CMD itself instead of restarting it, for servers "
        "that reload themselves (env GITSYNC_RELOAD_SIGNAL_ONLY=true; default off)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _parse_link(value: object, name: str) -> str:
    if not value:
        raise ConfigError(f"{name} is required: the symlink gitsync publishes, e.g. --link /repo/app")
    link = os.path.abspath(str(value))
    if os.path.dirname(link) == link:
        raise ConfigError(f"{name}: {value!r} is not a symlink path")
    return link


def _parse_command(words: Sequence[str]) -> tuple[str, ...]:
    command = tuple(words[1:] if words[:1] == ["--"] else words)
    if not command:
        raise ConfigError(f"CMD is missing: put it after --, e.g. {PROG} --link /repo/app -- python app.py")
    return command


def _parse_signal(value: object, name: str, default: signal.Signals) -> signal.Signals:
    if value is None:
        return default
    text = str(value).strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        raise ConfigError(f"{name}: unknown signal {value!r} (use e.g. TERM, INT, HUP or 15)") from None


def _parse_seconds(value: object, name: str, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = parse_duration(str(value))
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None
    if seconds < 0:
        raise ConfigError(f"{name}: {value!r} is negative")
    return seconds


def _parse_bool(value: object, name: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS | FALSE_WORDS:
        return word in TRUE_WORDS
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


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


def exit_status(returncode: int | None) -> int:
    """A shell's view of how a process ended: its code, or 128+N for signal N."""
    if returncode is None:
        return 128 + signal.SIGKILL
    return 128 - returncode if returncode < 0 else returncode


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, though not ours to signal
    return True


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so a grandchild whose parent died is ours to reap."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("prctl(PR_SET_CHILD_SUBREAPER) unavailable; orphans go to init")


@dataclass
class Child:
    process: subprocess.Popen
    tree: str
    started: float

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def sha(self) -> str:
        return os.path.basename(self.tree)


class Supervisor:
    """Keep CMD running in the link's current tree; subclasses say when the link moved."""

    def __init__(self, config: ReloadConfig):
        self.config = config
        self.should_exit = threading.Event()
        self.force_exit = threading.Event()  # a second SIGTERM/SIGINT: no grace period
        self.child: Child | None = None
        self.tree: str | None = None  # the tree CMD was last started in (or told about)
        self.status = 0  # how the last CMD ended
        self.backoff = BACKOFF_FIRST
        self.restart_at: float | None = None  # set while waiting to start CMD again
        self.touched_at: float | None = None  # the latest link event not yet acted on
        self.waiting_logged = False

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.handle_exit)

    def handle_exit(self, signum: int, frame: object) -> None:
        if self.should_exit.is_set():
            self.force_exit.set()
        self.should_exit.set()

    def run(self) -> int:
        become_subreaper()
        self.warn_if_not_a_symlink()
        try:
            for touched in self:
                if touched:
                    self.touched_at = time.monotonic()
                self.tend()
        finally:
            self.stop("shutting down")  # also on an unexpected error: never leave CMD behind
        return self.status

    def __iter__(self) -> Supervisor:
        return self

    def __next__(self) -> bool:
        if self.should_exit.is_set():
            raise StopIteration
        return self.link_touched()

    def link_touched(self) -> bool:
        """Wait up to about TICK; True if something happened to the link's name."""
        raise NotImplementedError("watching strategies override link_touched()")

    def tend(self) -> None:
        self.reap_orphans()
        self.notice_exit()
        if self.link_settled():
            self.follow_link()
        if self.child is None and self.start_due():
            self.start()

    def link_settled(self) -> bool:
        # A burst of flips keeps pushing touched_at; act once it has been quiet for --debounce.
        if self.touched_at is None or time.monotonic() - self.touched_at < self.config.debounce:
            return False
        self.touched_at = None
        return True

    def follow_link(self) -> None:
        tree = resolve_tree(self.config.link)
        if tree is None or tree == self.tree:
            return  # clean-up, temporary links, or a link that went away: keep what runs
        sha = os.path.basename(tree)
        if self.child is None:
            if self.restart_at is not None:
                logger.info("link moved to %s; starting now instead of waiting", sha)
                self.restart_at = None
        elif self.config.signal_only:
            # To the leader only, as systemd's reload does: a server's master reloads its
            # workers gracefully, while a worker sent HUP directly just dies.
            logger.info("link moved to %s; sending %s to pid %s", sha, self.config.signal.name, self.child.pid)
            self.signal_leader(self.child, self.config.signal)
            self.tree = tree
        else:
            self.stop(f"link moved to {sha}")

    def start_due(self) -> bool:
        if self.should_exit.is_set():
            return False
        return self.restart_at is None or time.monotonic() >= self.restart_at

    def start(self) -> None:
        tree = resolve_tree(self.config.link)
        if tree is None:
            self.log_waiting()
            return
        self.waiting_logged = False
        self.tree, self.restart_at = tree, None
        sha = os.path.basename(tree)
        try:
            process = subprocess.Popen(
                self.config.command,
                cwd=tree,
                env={**self.config.environ, "GITSYNC_HASH": sha},
                start_new_session=True,  # its own process group, so stopping reaches grandchildren
            )
        except OSError as error:
            logger.error("cannot start %s in %s: %s", self.config.command[0], tree, error)
            self.status = 127 if isinstance(error, FileNotFoundError) else 126
            self.schedule_restart(ran_for=0.0)
            return
        self.child = Child(process, tree, time.monotonic())
        logger.info("started pid %s in %s (GITSYNC_HASH=%s): %s", process.pid, tree, sha, " ".join(self.config.command))

    def log_waiting(self) -> None:
        if not self.waiting_logged:
            logger.info("waiting for %s to appear (a symlink to a published tree)", self.config.link)
            self.waiting_logged = True

    def warn_if_not_a_symlink(self) -> None:
        if os.path.lexists(self.config.link) and not os.path.islink(self.config.link):
            logger.warning("%s is not a symlink; it will never flip", self.config.link)

    def notice_exit(self) -> None:
        if self.child is None or self.child.process.poll() is None:
            return
        child, self.child = self.child, None
        ran_for = time.monotonic() - child.started
        logger.warning(
            "pid %s exited with status %s after %.1fs",
            child.pid, exit_status(child.process.returncode), ran_for,
        )
        self.status = self.end_group(child)  # its leader is gone; the rest of the group goes too
        self.schedule_restart(ran_for)

    def schedule_restart(self, ran_for: float) -> None:
        if ran_for >= HEALTHY_RUN:
            self.backoff = BACKOFF_FIRST
        delay, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_MAX)
        self.restart_at = time.monotonic() + delay
        logger.info("starting it again in %s", format_duration(delay))

    def stop(self, reason: str) -> None:
        child, self.child = self.child, None
        if child is None:
            return
        logger.info("stopping pid %s (%s): %s", child.pid, child.sha, reason)
        self.status = self.end_group(child)

    @property
    def stop_signal(self) -> signal.Signals:
        # With --signal-only the signal means "reload", so stopping takes SIGTERM.
        return signal.SIGTERM if self.config.signal_only else self.config.signal

    def end_group(self, child: Child) -> int:
        """Signal the child's whole group, SIGKILL it after the grace period; its exit status."""
        if child.process.poll() is not None and not group_alive(child.pid):
            return exit_status(child.process.returncode)
        self.signal_group(child, self.stop_signal)
        if not self.wait_for_group(child, self.config.grace):
            logger.warning("process group %s still running; sending SIGKILL", child.pid)
            self.signal_group(child, signal.SIGKILL)
            self.wait_for_leader(child)
        logger.info("pid %s ended with status %s", child.pid, exit_status(child.process.returncode))
        return exit_status(child.process.returncode)

    def signal_group(self, child: Child, signum: signal.Signals) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    def signal_leader(self, child: Child, signum: signal.Signals) -> None:
        if child.process.poll() is None:
            os.kill(child.pid, signum)

    def wait_for_group(self, child: Child, timeout: float) -> bool:
        """True once the leader has ended and no process is left in its group."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap_orphans(child)
            if child.process.poll() is not None and not group_alive(child.pid):
                return True
            if time.monotonic() >= deadline or self.force_exit.wait(GROUP_POLL):
                return False

    def wait_for_leader(self, child: Child) -> None:
        try:
            child.process.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            logger.error("pid %s survived SIGKILL for %s", child.pid, format_duration(KILL_WAIT))
        self.reap_orphans(child)

    def reap_orphans(self, *also: Child) -> None:
        """Collect exited descendants that were re-parented to us, leaving our own children to Popen."""
        ours = {child.pid: child for child in (self.child, *also) if child is not None}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            if info.si_pid in ours:
                ours.pop(info.si_pid).process.poll()  # Popen reaps it and keeps the status
                continue
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                return


class LinkWatcher(Supervisor):
    """Watch the link's directory, non-recursively, for events on the link's own name.

    One inotify watch: checkouts into .worktrees and the removal of old trees are never
    seen, and a flip (a temporary link renamed over the link) arrives as an event on
    the link's name. The directory may appear later; the watch then starts on it.
    """

    def __init__(self, config: ReloadConfig):
        super().__init__(config)
        self.directory, self.name = os.path.split(config.link)
        self.watcher = None
        self.watched: tuple[int, int] | None = None  # (device, inode) of the watched directory

    def link_touched(self) -> bool:
        if self.watcher is None:
            return self.open_watcher()
        try:
            changes = next(self.watcher)
        except StopIteration:
            return False
        if self.directory_replaced():
            # A watch follows the inode: a directory removed and made again is silent.
            logger.warning("%s was removed or replaced; watching it again when it exists", self.directory)
            self.close_watcher()
            return True
        return bool(changes)

    def open_watcher(self) -> bool:
        self.watched = directory_id(self.directory)
        if self.watched is None:
            self.should_exit.wait(TICK)
            return False
        logger.info("watching %s for changes to %s", self.directory, self.name)
        self.watcher = watchfiles.watch(
            self.directory,
            watch_filter=self.is_link,
            recursive=False,
            step=WATCH_STEP_MS,
            rust_timeout=int(TICK * 1000),
            yield_on_timeout=True,
            stop_event=self.should_exit,
            raise_interrupt=False,
        )
        try:
            next(self.watcher)  # the watch begins when the generator first runs
        except StopIteration:
            return False
        except (OSError, RuntimeError) as error:  # gone meanwhile, or not ours to read
            logger.warning("cannot watch %s: %s; trying again", self.directory, error)
            self.close_watcher()
            self.should_exit.wait(WATCH_RETRY)
            return False
        return True  # look at the link now: it may have moved before the watch began

    def close_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.watcher = None

    def directory_replaced(self) -> bool:
        return directory_id(self.directory) != self.watched

    def is_link(self, change: watchfiles.Change, path: str) -> bool:
        return os.path.basename(path) == self.name


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        config = build_config(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {PROG} %(levelname)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch at INFO
    supervisor = LinkWatcher(config)
    supervisor.install_signal_handlers()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
