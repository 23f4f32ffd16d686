"""gitsync-reload's settings: flags and GITSYNC_RELOAD_* variables -> one frozen ReloadConfig.

The one place that reads them; every bad value is one line (ConfigError), exit 2.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gitsync.durations import format_duration
from gitsync.options import (
    ConfigError,
    Option,
    Table,
    parse_bool,
    parse_host_port,
    parse_list,
    parse_seconds,
    parse_signal,
)

from .pycommand import PythonCommand, parse_modules, parse_python_command

PROG = "gitsync-reload"
ENV_PREFIX = "GITSYNC_RELOAD_"
DEFAULT_SIGNAL = signal.SIGTERM
DEFAULT_RELOAD_SIGNAL = signal.SIGHUP  # with --signal-only: what servers reload on
DEFAULT_GRACE = 10.0
DEFAULT_DEBOUNCE = 0.05  # long enough to fold a burst of flips into one restart
DEFAULT_READY_TIMEOUT = 10.0
DEFAULT_STATUS_BIND = ("127.0.0.1", 9101)  # loopback: the pod's containers share it, nothing else needs it
DEFAULT_PREPARE_TIMEOUT = 600.0
# The usual lock and requirement files of Python and Node projects; a missing one counts too.
DEFAULT_PREPARE_KEY = (
    "requirements.txt", "constraints.txt", "pyproject.toml", "setup.py", "setup.cfg", "Pipfile",
    "Pipfile.lock", "poetry.lock", "pdm.lock", "uv.lock",
    "package.json", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml",
)
CACHE_DIR_NAME = "gitsync-reload"  # under $TMPDIR (or /tmp) unless --cache-dir says otherwise

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

  # a push that changes requirements.txt installs it (once per content) before the app starts
  gitsync-reload --link /repo/app --prepare-key requirements.txt \\
      --prepare 'python -m pip install --target $GITSYNC_CACHE/site -r requirements.txt' \\
      -- sh -c 'PYTHONPATH="$GITSYNC_CACHE/site" exec python app.py'

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

Every command gets NOTIFY_SOCKET; READY=1 there marks it ready (so do --ready-url
and --ready-after). GET http://127.0.0.1:9101/api/v1/status (--status-bind) says what
runs, what is starting, and why the last start failed.

With --preload, CMD must be `python [OPTIONS] SCRIPT` or `python [OPTIONS] -m MODULE`.
One spare interpreter (CMD's python) imports the modules ahead of time and waits; each
start runs the script in it, in the new tree, and a new spare follows. List installed
packages only: the spare imports before the tree it will run exists.

With --prepare, the first start in a tree whose --prepare-key files hold content not
prepared before runs the prepare command there first (its own process group, up to
--prepare-timeout), with GITSYNC_CACHE naming an empty directory it fills; once it
succeeds, the directory becomes DIR/<key> and every command started for that content
gets GITSYNC_CACHE=DIR/<key>. A push that leaves the key files alone starts at once.
The command line is split like a shell's words, but no shell runs it: only
$GITSYNC_CACHE, $GITSYNC_HASH and $GITSYNC_PREV_HASH (or ${...}) in it are replaced.
The running command is stopped only after the prepare succeeded; a failed one leaves it
running, and the same content is not prepared again.
"""


def parse_url(text: str) -> str:
    """An http:// or https:// URL with a host."""
    url = text.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {text!r}")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    return url


@dataclass(frozen=True)
class ReloadConfig:
    link: str  # absolute path of the symlink; its target's last part is the commit
    command: tuple[str, ...]
    signal: signal.Signals  # stops the command; with signal_only, tells it to reload
    grace: float
    debounce: float
    signal_only: bool
    listen: tuple[str, int] | None  # with it: hand this socket to each command, overlap restarts
    ready_timeout: float  # how long a new command may take to be ready
    status_bind: tuple[str, int] | None  # where the status API listens; None: off
    ready_url: str | None  # a new command is ready once this answers 2xx
    ready_after: float | None  # ...or once it has stayed up this long
    report_output: bool  # keep the last lines of each command's output for the status
    preload: tuple[str, ...]  # modules a spare interpreter imports ahead of each start
    python: PythonCommand | None  # CMD split as Python reads it (with preload)
    prepare: tuple[str, ...]  # run in a new tree before the first start there; () = off
    prepare_key: tuple[str, ...]  # paths in the tree whose content decides whether to prepare
    prepare_timeout: float
    cache_dir: str  # absolute: DIR/<key> per prepared content
    environ: Mapping[str, str] = field(repr=False, compare=False)  # the command's base environment


def parse_command_line(text: str) -> tuple[str, ...]:
    """'pip install -r "my reqs.txt"' -> its words, as a shell splits them (no shell runs them)."""
    try:
        return tuple(shlex.split(text))
    except ValueError as error:  # shlex says "No closing quotation"
        raise ValueError(f"cannot split {text!r} into words: {str(error).lower()}") from None


def parse_key_files(text: str) -> tuple[str, ...]:
    """'requirements.txt, web/package-lock.json' -> paths inside the tree."""
    paths = parse_list(text)
    if not paths:
        raise ValueError("expected one or more paths in the tree, separated by commas")
    for path in paths:
        if os.path.isabs(path) or ".." in path.split("/"):
            raise ValueError(f"{path!r} is not a path inside the tree")
    return paths


def parse_timeout(text: str) -> float:
    seconds = parse_seconds(text)
    if seconds == 0:
        raise ValueError("must be more than 0")
    return seconds


OPTIONS: tuple[Option, ...] = (
    Option("--link", str, None, "the symlink gitsync publishes, e.g. /repo/app", required=True,
           metavar="PATH"),
    Option("--signal", parse_signal, None, "the signal that stops CMD: TERM, SIGTERM, INT, HUP or a number",
           metavar="NAME", default_text="TERM (HUP with --signal-only)"),
    Option("--grace", parse_seconds, DEFAULT_GRACE, "time CMD gets to exit after the signal before SIGKILL"),
    Option("--debounce", parse_seconds, DEFAULT_DEBOUNCE, "wait this long after the last flip of a burst, "
           "then restart once onto the newest tree"),
    Option("--signal-only", parse_bool, False, "on a flip, send the signal to CMD itself instead of "
           "restarting it, for servers that reload themselves"),
    Option("--listen", parse_host_port, None, "bind this TCP address once and pass it to CMD as fd 3 "
           "(LISTEN_FDS=1, LISTEN_PID); on a flip start the new CMD before stopping the old one",
           metavar="HOST:PORT", default_text="off: CMD binds its own port"),
    Option("--ready-timeout", parse_seconds, DEFAULT_READY_TIMEOUT, "with --listen: stop the old CMD when "
           "the new one sends READY=1 to $NOTIFY_SOCKET, or after this long; with --ready-url or "
           "--ready-after: a CMD not ready by then is a failed attempt (with --listen the old one "
           "goes on serving)"),
    Option("--status-bind", parse_host_port, DEFAULT_STATUS_BIND, "serve GET /api/v1/status here (what runs, "
           "what starts, why it failed); empty turns it off; port 0 picks a free port (logged)",
           metavar="HOST:PORT", default_text="127.0.0.1:9101"),
    Option("--ready-url", parse_url, None, "a new CMD is ready once this URL answers 2xx (polled; besides "
           "READY=1 on $NOTIFY_SOCKET)", metavar="URL",
           default_text="off: READY=1, or (without --listen) up for 1s"),
    Option("--ready-after", parse_seconds, None, "a new CMD is ready once it has stayed up this long "
           "(besides READY=1)", default_text="off"),
    Option("--report-output", parse_bool, False, "keep the last lines of CMD's stdout and stderr (still "
           "passed through) and show them in the status when it fails"),
    Option("--prepare", parse_command_line, (), "run this command in a new tree before the first start "
           "there, when its --prepare-key files hold new content (a command line split like argv, no shell; "
           "$GITSYNC_CACHE, $GITSYNC_HASH, $GITSYNC_PREV_HASH in it are replaced)", metavar="CMD",
           default_text="none"),
    Option("--prepare-key", parse_key_files, DEFAULT_PREPARE_KEY, "comma list of paths in the tree whose "
           "content is the key (default: the usual Python and Node lock and requirement files; a missing one "
           "counts too): the same content reuses DIR/<key> without preparing again", metavar="FILES",
           default_text=", ".join(DEFAULT_PREPARE_KEY)),
    Option("--prepare-timeout", parse_timeout, DEFAULT_PREPARE_TIMEOUT, "kill the prepare command "
           "(its whole process group) after this long; the attempt fails", metavar="DURATION",
           default_text="10m"),
    Option("--cache-dir", str, None, "where prepared directories live: DIR/<key>, passed as $GITSYNC_CACHE "
           "to the prepare command and to CMD", metavar="DIR", default_text="${TMPDIR:-/tmp}/gitsync-reload"),
    Option("--preload", parse_modules, (), "for CMD `python SCRIPT` or `python -m MODULE`: keep one "
           "interpreter ready that has imported these installed packages (e.g. flask,waitress), and run "
           "the next start in it", metavar="MODULE,...", default_text="none: every start is a fresh interpreter"),
)

TABLE = Table(
    prog=PROG, env_prefix=ENV_PREFIX, options=OPTIONS, epilog=EPILOG, command=True,
    usage=f"{PROG} [OPTIONS] -- CMD ARGS...",
    description="Run CMD inside the tree the gitsync link points at; restart it when the link flips.",
)


def build_config(argv: Sequence[str], environ: Mapping[str, str]) -> ReloadConfig:
    """The one place that reads flags and GITSYNC_RELOAD_* variables; raise ConfigError."""
    values = TABLE.parse(argv, environ)
    _check_readiness(values)
    signal_only, modules = values["signal_only"], values["preload"]
    command = _require_command(values["command"])
    if modules and signal_only:
        raise ConfigError("--preload warms the next start, and --signal-only never restarts CMD: use one of them")
    if values["prepare"] and signal_only:
        raise ConfigError("--prepare hands each new tree its own $GITSYNC_CACHE at a start, and "
                          "--signal-only never restarts CMD: use one of them")
    if modules and getattr(sys, "frozen", False):
        # A single executable has no Python of its own to give the command's interpreter.
        raise ConfigError("--preload needs gitsync-reload installed as a Python package; this build is one executable")
    return ReloadConfig(
        link=_absolute_link(values["link"]),
        command=command,
        signal=values["signal"] or (DEFAULT_RELOAD_SIGNAL if signal_only else DEFAULT_SIGNAL),
        grace=values["grace"],
        debounce=values["debounce"],
        signal_only=signal_only,
        listen=values["listen"],
        ready_timeout=values["ready_timeout"],
        status_bind=values["status_bind"],
        ready_url=values["ready_url"],
        ready_after=values["ready_after"],
        report_output=values["report_output"],
        preload=modules,
        python=_parse_python_command(command) if modules else None,
        prepare=values["prepare"],
        prepare_key=values["prepare_key"],
        prepare_timeout=values["prepare_timeout"],
        cache_dir=_cache_dir(values["cache_dir"], environ),
        environ=MappingProxyType(dict(environ)),
    )


def _check_readiness(values: dict) -> None:
    after, timeout = values["ready_after"], values["ready_timeout"]
    if after is not None and after >= timeout:
        raise ConfigError(f"--ready-after ({format_duration(after)}) must be shorter than --ready-timeout "
                          f"({format_duration(timeout)}), or no command is ever ready")
def _cache_dir(value: str | None, environ: Mapping[str, str]) -> str:
    if value is None:
        value = os.path.join(environ.get("TMPDIR") or "/tmp", CACHE_DIR_NAME)
    if not value.strip():
        raise ConfigError("--cache-dir: must not be empty")
    return os.path.abspath(value)


def _absolute_link(value: str) -> str:
    link = os.path.abspath(value)
    if os.path.dirname(link) == link:
        raise ConfigError(f"--link: {value!r} is not a symlink path")
    return link


def _require_command(command: tuple[str, ...]) -> tuple[str, ...]:
    if not command:
        raise ConfigError(f"CMD is missing: put it after --, e.g. {PROG} --link /repo/app -- python app.py")
    return command


def _parse_python_command(command: Sequence[str]) -> PythonCommand:
    try:
        return parse_python_command(command)
    except ValueError as error:
        raise ConfigError(f"--preload: {error}") from None
