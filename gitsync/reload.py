"""gitsync-reload: run a command inside the published tree, and again in the next one.

    gitsync-reload --link /repo/app -- python app.py

The sidecar publishes each commit as <root>/.worktrees/<sha> and renames a new
relative symlink over <root>/<link>. This program starts the command with its
working directory at the link's target (resolved at every start, so it never
keeps running in a tree that is about to be deleted) and GITSYNC_HASH set to the
published commit, and restarts it when the link moves.

With --listen HOST:PORT it binds the listening socket once and hands it to every
command as fd 3 (systemd's socket activation: LISTEN_FDS=1, LISTEN_PID), so the port
never closes: on a flip the new command starts beside the old one, and the old one
is told to stop (and finishes its requests) only once the new one says READY=1 on
its NOTIFY_SOCKET (systemd's sd_notify), or after --ready-timeout.

With --preload MODULE,... (for `python SCRIPT` commands) each start runs in a spare
interpreter that imported those packages before the flip (gitsync/preload.py).

Shape: `Supervisor` owns the children's process groups, the spare and the signals;
`LinkWatcher` answers the one question "did the link's name change?" by
watching the link's directory, non-recursively, with watchfiles.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import watchfiles

from gitsync import preload
from gitsync.durations import format_duration, parse_duration

logger = logging.getLogger(__name__)

PROG = "gitsync-reload"
ENV_PREFIX = "GITSYNC_RELOAD_"
DEFAULT_SIGNAL = signal.SIGTERM
DEFAULT_RELOAD_SIGNAL = signal.SIGHUP  # with --signal-only: what servers reload on
DEFAULT_GRACE = 10.0
DEFAULT_DEBOUNCE = 0.05  # long enough to fold a burst of flips into one restart
DEFAULT_READY_TIMEOUT = 10.0
SPARE_DELAY = 1.0  # after a start, warm the next interpreter this much later, or at READY=1 (--preload)
SPARE_RETRY = 30.0  # after a spare failed once it had worked, wait this long before the next
WARM_WAIT = 10.0  # a start waits this long for a spare still importing, then starts cold

TICK = 0.05  # longest the loop sleeps before looking at the children again
STARTING_TICK = 0.01  # ...while a new command starts beside the old one (--listen)
WATCH_STEP_MS = 10  # watchfiles batches events this long; a flip is seen in ~2 steps (~15 ms)
WATCH_RETRY = 1.0  # after the watch could not be set up
BACKOFF_FIRST = 0.5  # delay before restarting a command that ended on its own...
BACKOFF_MAX = 30.0  # ...doubling up to this...
HEALTHY_RUN = 10.0  # ...and back to the first delay after a run this long
KILL_WAIT = 5.0  # how long to wait for the leader after SIGKILL
GROUP_POLL = 0.01  # a process group has nothing to wait on; look this often while it stops
PR_SET_CHILD_SUBREAPER = 36

LISTEN_FD = 3  # SD_LISTEN_FDS_START: where socket activation puts the first socket
LISTEN_BACKLOG = 128  # connections the kernel holds while no command is accepting
NOTICE_SIZE = 4096  # sd_notify datagrams are a few short KEY=VALUE lines

# systemd's contract: LISTEN_PID is the pid of the process that reads LISTEN_FDS. The
# pid is known only after fork and the environment is fixed at exec, and code run
# between the two (preexec_fn) is unsafe in a process with threads, as this one is
# (watchfiles). So a shim, already running as the command's process, writes its own
# pid and execs the command in its place: /bin/sh where there is one (1 ms), else
# this Python (about 25 ms; distroless images have no shell).
SH_SHIM = ("/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', PROG)
PYTHON_SHIM_CODE = """\
import os, sys
os.environ["LISTEN_PID"] = str(os.getpid())
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as error:
    print(f"%s: cannot run {sys.argv[1]}: {error.strerror}", file=sys.stderr)
    sys.exit(127 if isinstance(error, FileNotFoundError) else 126)
""" % PROG

# With --listen, set for each command by gitsync-reload, never passed on from its own environment.
LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET")

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

  # zero-downtime: hold port 8000 and hand it to each command as fd 3; start the new
  # one beside the old, stop the old one once the new one sent READY=1
  gitsync-reload --link /repo/app --listen 0.0.0.0:8000 --signal INT -- python app.py

  # start each new app in an interpreter that imported Flask and waitress beforehand
  gitsync-reload --link /repo/app --listen 0.0.0.0:8000 --signal INT \\
      --preload flask,waitress -- python app.py

The command runs in its own process group: stopping it signals the whole group,
then sends SIGKILL to the group after the grace period. A command that exits on its
own is started again after 0.5s, 1s, 2s, ... up to 30s (back to 0.5s after a 10s
run); a publish during that wait starts it at once. SIGTERM, SIGINT or SIGHUP
stops the command and exits with its status (128+N if signal N ended it); a second
one skips the grace period.

With --listen the command gets the socket as fd 3 with LISTEN_FDS=1 and LISTEN_PID
(its own pid), and NOTIFY_SOCKET, a datagram socket to send READY=1 to once it
serves. A new command that exits before it is ready leaves the old one serving.

With --preload, CMD must be `python [OPTIONS] SCRIPT` or `python [OPTIONS] -m MODULE`.
One spare interpreter (CMD's python) imports the modules ahead of time and waits; each
start runs the script in it, in the new tree, and a new spare follows. List installed
packages only: the spare imports before the tree it will run exists.
"""


class ConfigError(Exception):
    """A bad or missing setting; the message is the one line shown to the user."""


class NotStarted(Exception):
    """A start was called off: gitsync-reload is exiting."""


@dataclass(frozen=True)
class ReloadConfig:
    link: str  # absolute path of the symlink; its target's last part is the commit
    command: tuple[str, ...]
    signal: signal.Signals  # stops the command; with signal_only, tells it to reload
    grace: float
    debounce: float
    signal_only: bool
    listen: tuple[str, int] | None  # with it: hand this socket to each command, overlap restarts
    ready_timeout: float  # with listen: how long a new command may take to send READY=1
    preload: tuple[str, ...]  # modules a spare interpreter imports ahead of each start
    python: preload.PythonCommand | None  # CMD split as Python reads it (with preload)
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
    command = _parse_command(args.command)
    modules = _parse_preload(*setting("preload"))
    if modules and signal_only:
        raise ConfigError("--preload warms the next start, and --signal-only never restarts CMD: use one of them")
    return ReloadConfig(
        link=_parse_link(*setting("link")),
        command=command,
        signal=_parse_signal(*setting("signal"), default=default_signal),
        grace=_parse_seconds(*setting("grace"), default=DEFAULT_GRACE),
        debounce=_parse_seconds(*setting("debounce"), default=DEFAULT_DEBOUNCE),
        signal_only=signal_only,
        listen=_parse_listen(*setting("listen")),
        ready_timeout=_parse_seconds(*setting("ready-timeout"), default=DEFAULT_READY_TIMEOUT),
        preload=modules,
        python=_parse_python_command(command) if modules else None,
        environ=MappingProxyType(dict(environ)),
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, raised instead of printing usage and exiting
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [--link PATH] [--signal NAME] [--grace DURATION] "
        "[--debounce DURATION] [--signal-only] [--listen HOST:PORT] [--ready-timeout DURATION] "
        "[--preload MODULE,...] -- CMD ARGS...",
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
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="bind this TCP address once and pass it to CMD as fd 3 (LISTEN_FDS=1, LISTEN_PID); "
        "on a flip start the new CMD before stopping the old one "
        "(env GITSYNC_RELOAD_LISTEN; default: off, CMD binds its own port)",
    )
    parser.add_argument(
        "--ready-timeout",
        metavar="DURATION",
        help="with --listen: stop the old CMD when the new one sends READY=1 to $NOTIFY_SOCKET, "
        "or after this long (env GITSYNC_RELOAD_READY_TIMEOUT; "
        f"default {format_duration(DEFAULT_READY_TIMEOUT)})",
    )
    parser.add_argument(
        "--preload",
        metavar="MODULE,...",
        help="for CMD `python SCRIPT` or `python -m MODULE`: keep one interpreter ready that has "
        "imported these installed packages (e.g. flask,waitress), and run the next start in it "
        "(env GITSYNC_RELOAD_PRELOAD; default: none, every start is a fresh interpreter)",
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


def _parse_listen(value: object, name: str) -> tuple[str, int] | None:
    if value is None or not str(value).strip():
        return None
    host, sep, port = str(value).strip().rpartition(":")
    if not sep:
        raise ConfigError(f"{name}: expected HOST:PORT, e.g. 0.0.0.0:8000, got {value!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{name}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{name}: port {number} is out of range")
    return host.strip("[]") or "0.0.0.0", number


def _parse_command(words: Sequence[str]) -> tuple[str, ...]:
    command = tuple(words[1:] if words[:1] == ["--"] else words)
    if not command:
        raise ConfigError(f"CMD is missing: put it after --, e.g. {PROG} --link /repo/app -- python app.py")
    return command


def _parse_preload(value: object, name: str) -> tuple[str, ...]:
    try:
        return preload.parse_modules(str(value or ""))
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


def _parse_python_command(command: Sequence[str]) -> preload.PythonCommand:
    try:
        return preload.parse_python_command(command)
    except ValueError as error:
        raise ConfigError(f"--preload: {error}") from None


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


def open_listener(address: tuple[str, int]) -> socket.socket:
    """Bind and listen once, at LISTEN_FD, where every command will find it; raise OSError."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)  # SO_REUSEADDR
    if sock.fileno() != LISTEN_FD:
        # Nothing of ours uses fd 3 this early; whatever a parent left there is not ours either.
        os.dup2(sock.fileno(), LISTEN_FD, inheritable=False)
        sock.close()
        sock = socket.socket(fileno=LISTEN_FD)
    return sock


def exec_shim() -> tuple[str, ...]:
    """The words put before CMD so that it starts with LISTEN_PID set to its own pid."""
    if os.access(SH_SHIM[0], os.X_OK):
        return SH_SHIM
    return (sys.executable, "-I", "-S", "-c", PYTHON_SHIM_CODE)


class Notices:
    """One command's NOTIFY_SOCKET: a datagram socket it sends sd_notify lines to."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def ready(self) -> bool:
        """Read what has arrived (left unread, the socket fills and blocks the sender); True on READY=1."""
        ready = False
        while True:
            try:
                data = self.sock.recv(NOTICE_SIZE)
            except OSError:  # nothing more (BlockingIOError)
                return ready
            ready = ready or "READY=1" in data.decode("utf-8", "replace").splitlines()

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass
class Child:
    process: subprocess.Popen
    tree: str
    started: float
    notices: Notices | None = None  # with --listen
    ready: bool = False  # it sent READY=1
    warm: bool = False  # it runs in a spare interpreter that had the --preload modules imported
    stop_by: float | None = None  # once told to stop: when it gets SIGKILL

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def sha(self) -> str:
        return os.path.basename(self.tree)

    def read_notices(self) -> bool:
        """Read its NOTIFY_SOCKET; True the first time READY=1 is seen."""
        if self.notices is None or not self.notices.ready() or self.ready:
            return False
        self.ready = True
        return True

    def close(self) -> None:
        if self.notices is not None:
            self.notices.close()
            self.notices = None


class Supervisor:
    """Keep CMD running in the link's current tree; subclasses say when the link moved."""

    def __init__(self, config: ReloadConfig, listener: socket.socket | None = None):
        self.config = config
        self.listener = listener  # with --listen: the socket every command inherits as fd 3
        self.should_exit = threading.Event()
        self.force_exit = threading.Event()  # a second SIGTERM/SIGINT: no grace period
        self.child: Child | None = None  # the command that serves
        self.pending: Child | None = None  # with --listen: started beside it, not ready yet
        self.draining: list[Child] = []  # with --listen: replaced, finishing their requests
        self.tree: str | None = None  # the tree CMD was last started in (or told about)
        self.status = 0  # how the last CMD ended
        self.backoff = BACKOFF_FIRST
        self.restart_at: float | None = None  # set while waiting to start CMD again
        self.touched_at: float | None = None  # the latest link event not yet acted on
        self.waiting_logged = False
        self.shim = exec_shim() if listener is not None else ()
        self.notice_dir: str | None = None  # holds each command's NOTIFY_SOCKET
        self.spawned = 0  # names each NOTIFY_SOCKET
        self.link_seen: str | None = None  # the link's target, as wait_for_ready() last saw it
        self.spare: preload.Spare | None = None  # with --preload: the interpreter the next start runs in
        self.spare_due: float | None = time.monotonic() if config.preload else None  # when to make one
        self.spare_at_ready = False  # make it as soon as the new command sends READY=1 instead
        self.preload_proven = False  # a spare has imported the modules once: later failures are not fatal
        self.fatal: str | None = None  # why gitsync-reload gave up (exit 2)

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
        if self.listener is not None:
            self.notice_dir = tempfile.mkdtemp(prefix=f"{PROG}-")
        try:
            self.tend_spare()  # it imports while the watch is set up and the link awaited
            for touched in self:
                if touched:
                    self.touched_at = time.monotonic()
                self.tend()
        finally:
            self.discard_spare()
            self.stop_all("shutting down")  # also on an unexpected error: never leave CMD behind
            if self.notice_dir is not None:
                shutil.rmtree(self.notice_dir, ignore_errors=True)
        return 2 if self.fatal else self.status

    def __iter__(self) -> Supervisor:
        return self

    def __next__(self) -> bool:
        if self.should_exit.is_set():
            raise StopIteration
        if self.pending is not None and self.pending.notices is not None:
            return self.wait_for_ready(self.pending.notices)
        return self.link_touched()

    def wait_for_ready(self, notices: Notices) -> bool:
        """While a new command starts: wake as soon as it writes to its NOTIFY_SOCKET, and
        look at the link every STARTING_TICK (the watcher keeps its events meanwhile)."""
        select.select([notices.sock], [], [], STARTING_TICK)
        tree = resolve_tree(self.config.link)
        moved, self.link_seen = tree != self.link_seen, tree
        return moved

    def link_touched(self) -> bool:
        """Wait up to about TICK; True if something happened to the link's name."""
        raise NotImplementedError("watching strategies override link_touched()")

    def children(self) -> list[Child]:
        return [child for child in (self.child, self.pending, *self.draining) if child is not None]

    def tend(self) -> None:
        self.tend_spare()
        self.reap_orphans()
        self.read_notices()
        self.notice_exit()
        self.notice_pending()
        self.notice_drained()
        if self.link_settled():
            self.follow_link()
        if self.start_due():
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
        if self.restart_at is not None:
            logger.info("link moved to %s; starting now instead of waiting", sha)
            self.restart_at = None
        if self.child is None:
            return  # start_due(): nothing runs, so it starts at once
        if self.config.signal_only:
            # To the leader only, as systemd's reload does: a server's master reloads its
            # workers gracefully, while a worker sent HUP directly just dies.
            logger.info("link moved to %s; sending %s to pid %s", sha, self.config.signal.name, self.child.pid)
            self.signal_leader(self.child, self.config.signal)
            self.tree = tree
        elif self.listener is not None:
            self.start_beside(sha)
        else:
            self.stop(f"link moved to {sha}")

    def start_beside(self, sha: str) -> None:
        """Start the new command while the old one serves; notice_pending() swaps them."""
        if self.pending is not None:
            logger.info("link moved to %s; stopping pid %s (%s), which was not ready yet",
                        sha, self.pending.pid, self.pending.sha)
            self.drain(self.pending)  # it may be accepting already
            self.pending = None
        logger.info("link moved to %s; starting it beside pid %s (%s)", sha, self.child.pid, self.child.sha)
        self.start()

    def start_due(self) -> bool:
        if self.should_exit.is_set() or self.pending is not None:
            return False
        if self.restart_at is not None:
            return time.monotonic() >= self.restart_at
        return self.child is None

    def start(self) -> None:
        tree = resolve_tree(self.config.link)
        if tree is None:
            self.log_waiting()
            return
        self.waiting_logged = False
        self.tree, self.restart_at = tree, None
        sha = os.path.basename(tree)
        try:
            child = self.spawn(tree, sha)
        except NotStarted:
            return
        except OSError as error:
            logger.error("cannot start %s in %s: %s", self.config.command[0], tree, error)
            self.status = 127 if isinstance(error, FileNotFoundError) else 126
            self.schedule_restart(ran_for=0.0)
            return
        if self.child is None:
            self.child = child
        else:
            self.pending = child
        logger.info("started pid %s in %s (GITSYNC_HASH=%s%s): %s", child.pid, tree, sha,
                    ", warm" if child.warm else "", " ".join(self.config.command))

    def spawn(self, tree: str, sha: str) -> Child:
        """Start CMD in tree: in the spare interpreter when there is one, else afresh."""
        environ = {"GITSYNC_HASH": sha}  # what this command gets beyond the base environment
        notices = None
        if self.listener is not None:
            self.spawned += 1
            notices = Notices(os.path.join(self.notice_dir, f"notify-{self.spawned}"))
            environ.update(LISTEN_FDS="1", NOTIFY_SOCKET=notices.path)  # LISTEN_PID: the shim or the spare
        try:
            process = self.start_warm(tree, environ)
            warm = process is not None
            if process is None:
                process = self.start_cold(tree, environ)
        except BaseException:
            if notices is not None:
                notices.close()
            raise
        return Child(process, tree, time.monotonic(), notices, warm=warm)

    def start_cold(self, tree: str, environ: Mapping[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            (*self.shim, *self.config.command),
            cwd=tree,
            env={**self.base_environ(), **environ},
            start_new_session=True,  # its own process group, so stopping reaches grandchildren
            pass_fds=(LISTEN_FD,) if self.listener is not None else (),
        )

    def base_environ(self) -> dict[str, str]:
        """The environment every command starts from; with --listen, without a parent's
        socket-activation variables (each command gets its own)."""
        if self.listener is None:
            return dict(self.config.environ)
        return {name: value for name, value in self.config.environ.items() if name not in LISTEN_ENV}

    def start_warm(self, tree: str, environ: Mapping[str, str]) -> subprocess.Popen | None:
        """Hand tree and environ to the spare interpreter; None when there is none to use."""
        spare = self.spare
        if spare is None:
            return None
        state = spare.wait(WARM_WAIT, self.should_exit.is_set)
        if self.should_exit.is_set():
            raise NotStarted()
        if state == "failed":
            self.spare_failed(spare.error)
            if self.fatal:
                raise NotStarted()
            return None
        self.spare, self.spare_due = None, time.monotonic() + SPARE_DELAY
        self.spare_at_ready = True
        if state == "warming":
            logger.warning("spare interpreter pid %s is still importing after %s; starting afresh",
                           spare.pid, format_duration(WARM_WAIT))
            spare.discard()
            return None
        self.note_warm(spare)
        try:
            return spare.hand_over(tree, environ)
        except OSError as error:  # it died just now
            logger.warning("spare interpreter pid %s cannot take the start (%s); starting afresh", spare.pid, error)
            spare.discard()
            return None

    def tend_spare(self) -> None:
        """With --preload: make a spare when one is due, and notice one that is warm or failed."""
        if self.should_exit.is_set():
            return
        if self.spare is None:
            if self.spare_due is not None and time.monotonic() >= self.spare_due:
                self.make_spare()
            return
        state = self.spare.state()
        if state == "ready":
            self.note_warm(self.spare)
        elif state == "failed":
            self.spare_failed(self.spare.error)

    def make_spare(self) -> None:
        self.spare_due, self.spare_at_ready = None, False
        link_directory = os.path.realpath(os.path.dirname(self.config.link))
        try:
            self.spare = preload.Spare(
                self.config.python,
                self.config.preload,
                self.base_environ(),
                forbidden=os.path.join(link_directory, ".worktrees"),
                pass_fds=(LISTEN_FD,) if self.listener is not None else (),
            )
        except OSError as error:
            self.spare_failed(f"cannot run {self.config.python.interpreter[0]}: {error.strerror or error}")

    def note_warm(self, spare: preload.Spare) -> None:
        if not spare.announced:
            logger.info("spare interpreter pid %s is ready: imported %s in %s; the next start runs in it",
                        spare.pid, ",".join(self.config.preload), format_duration(round(spare.warm_after, 3)))
            spare.announced = True
        self.preload_proven = True

    def spare_failed(self, error: str | None) -> None:
        self.discard_spare()
        if not self.preload_proven:  # it never worked: a setting is wrong, not a passing fault
            self.fatal = f"--preload: {error}"
            self.should_exit.set()
            return
        logger.warning("spare interpreter failed: %s; starting afresh meanwhile, trying again in %s",
                       error, format_duration(SPARE_RETRY))
        self.spare_due, self.spare_at_ready = time.monotonic() + SPARE_RETRY, False

    def discard_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.discard()

    def log_waiting(self) -> None:
        if not self.waiting_logged:
            logger.info("waiting for %s to appear (a symlink to a published tree)", self.config.link)
            self.waiting_logged = True

    def warn_if_not_a_symlink(self) -> None:
        if os.path.lexists(self.config.link) and not os.path.islink(self.config.link):
            logger.warning("%s is not a symlink; it will never flip", self.config.link)

    def read_notices(self) -> None:
        for child in self.children():
            if not child.read_notices():
                continue
            if child is self.child:
                logger.info("pid %s is ready", child.pid)
            if self.spare_at_ready and self.spare_due is not None:
                self.spare_due = min(self.spare_due, time.monotonic())  # it serves: warm the next one now

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
        if self.pending is None:
            self.schedule_restart(ran_for)  # else the one starting takes over

    def notice_pending(self) -> None:
        pending = self.pending
        if pending is None:
            return
        if pending.process.poll() is not None:
            self.pending = None
            ran_for = time.monotonic() - pending.started
            logger.warning(
                "pid %s exited with status %s after %.1fs, before it was ready%s",
                pending.pid, exit_status(pending.process.returncode), ran_for,
                f"; pid {self.child.pid} ({self.child.sha}) goes on serving" if self.child else "",
            )
            self.status = self.end_group(pending)
            self.schedule_restart(ran_for)
        elif pending.ready:
            self.take_over(f"pid {pending.pid} is ready")
        elif self.child is None:
            self.take_over(f"pid {pending.pid} is the only one left")
        elif time.monotonic() - pending.started >= self.config.ready_timeout:
            self.take_over(f"pid {pending.pid} sent no READY=1 in {format_duration(self.config.ready_timeout)}")

    def take_over(self, reason: str) -> None:
        """The pending command serves from now on; the old one stops, finishing its requests."""
        old, self.child, self.pending = self.child, self.pending, None
        if old is None:
            logger.info("%s", reason)
            return
        logger.info("%s; stopping pid %s (%s)", reason, old.pid, old.sha)
        self.drain(old)

    def drain(self, child: Child) -> None:
        self.signal_stop(child)
        self.draining.append(child)

    def notice_drained(self) -> None:
        for child in list(self.draining):
            if child.process.poll() is not None and not group_alive(child.pid):
                self.draining.remove(child)
                self.log_ended(child)
            elif self.force_exit.is_set() or time.monotonic() >= child.stop_by:
                self.draining.remove(child)
                self.kill_group(child)

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

    def stop_all(self, reason: str) -> None:
        """Signal every command at once, then wait for each; the status is the serving one's."""
        for child in (self.pending, self.child):
            if child is not None:
                logger.info("stopping pid %s (%s): %s", child.pid, child.sha, reason)
                self.signal_stop(child)
        for child in (self.pending, *self.draining):
            if child is not None:
                self.finish_stop(child)
        self.pending, self.draining = None, []
        if self.child is not None:
            self.status = self.finish_stop(self.child)
            self.child = None

    @property
    def stop_signal(self) -> signal.Signals:
        # With --signal-only the signal means "reload", so stopping takes SIGTERM.
        return signal.SIGTERM if self.config.signal_only else self.config.signal

    def end_group(self, child: Child) -> int:
        """Signal the child's whole group, SIGKILL it after the grace period; its exit status."""
        if child.process.poll() is not None and not group_alive(child.pid):
            child.close()
            return exit_status(child.process.returncode)
        self.signal_stop(child)
        return self.finish_stop(child)

    def signal_stop(self, child: Child) -> None:
        child.stop_by = time.monotonic() + self.config.grace
        if child.process.poll() is None or group_alive(child.pid):
            self.signal_group(child, self.stop_signal)

    def finish_stop(self, child: Child) -> int:
        if not self.wait_for_group(child, child.stop_by - time.monotonic()):
            self.kill_group(child)
        else:
            self.log_ended(child)
        return exit_status(child.process.returncode)

    def kill_group(self, child: Child) -> None:
        logger.warning("process group %s still running; sending SIGKILL", child.pid)
        self.signal_group(child, signal.SIGKILL)
        self.wait_for_leader(child)
        self.log_ended(child)

    def log_ended(self, child: Child) -> None:
        child.close()
        logger.info("pid %s ended with status %s", child.pid, exit_status(child.process.returncode))

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
        ours = {child.pid: child for child in (*self.children(), *also, *([self.spare] if self.spare else []))}
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

    def __init__(self, config: ReloadConfig, listener: socket.socket | None = None):
        super().__init__(config, listener)
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
    listener = None
    if config.listen is not None:
        host, port = config.listen
        try:
            listener = open_listener(config.listen)
        except OSError as error:
            print(f"{PROG}: error: --listen {host}:{port}: cannot listen: {error.strerror or error}", file=sys.stderr)
            return 1
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {PROG} %(levelname)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch at INFO
    if listener is not None:
        host, port = listener.getsockname()[:2]
        logger.info("listening on %s:%s; each command gets the socket as fd %s",
                    f"[{host}]" if ":" in host else host, port, LISTEN_FD)
    supervisor = LinkWatcher(config, listener)
    supervisor.install_signal_handlers()
    status = supervisor.run()
    if supervisor.fatal:
        print(f"{PROG}: error: {supervisor.fatal}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
