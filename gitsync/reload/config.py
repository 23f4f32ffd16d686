"""gitsync-reload's settings: flags and GITSYNC_RELOAD_* variables -> one frozen ReloadConfig.

The one place that reads them; every bad value is one line (ConfigError), exit 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gitsync.durations import format_duration, parse_duration

from .pycommand import PythonCommand, parse_modules, parse_python_command

PROG = "gitsync-reload"
ENV_PREFIX = "GITSYNC_RELOAD_"
DEFAULT_SIGNAL = signal.SIGTERM
DEFAULT_RELOAD_SIGNAL = signal.SIGHUP  # with --signal-only: what servers reload on
DEFAULT_GRACE = 10.0
DEFAULT_DEBOUNCE = 0.05  # long enough to fold a burst of flips into one restart
DEFAULT_READY_TIMEOUT = 10.0

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
    python: PythonCommand | None  # CMD split as Python reads it (with preload)
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
    if modules and getattr(sys, "frozen", False):
        # A single executable has no Python of its own to give the command's interpreter.
        raise ConfigError("--preload needs gitsync-reload installed as a Python package; this build is one executable")
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
        return parse_modules(str(value or ""))
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


def _parse_python_command(command: Sequence[str]) -> PythonCommand:
    try:
        return parse_python_command(command)
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
