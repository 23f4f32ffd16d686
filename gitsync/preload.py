"""Warm starts for Python commands: gitsync-reload --preload MODULE,...

A restart costs the command's whole start-up, and for a Python web app most of that is
importing its framework (Flask: a quarter to half a second here), not its own code. So
gitsync-reload keeps one interpreter started ahead of time (a "spare"): the command's own
Python, with its options, that imports the named modules and then waits on a pipe. On a
flip the spare is told the new tree and environment; it changes into the tree and runs
the script (or -m module) as `python SCRIPT` would, with no second interpreter start.
A new spare is made a moment later, for the next flip.

Only installed packages belong in the list: the spare starts before the tree it will run
is published, so code imported from a tree would be the previous commit's. The spare
starts in / with the script's directory off sys.path, so the app's own modules cannot be
imported by accident, and the spare refuses a module that was loaded from the shared
volume (the link's directory).

The spare is a direct child of gitsync-reload in its own process group, so it is
stopped, waited for and reaped like any command. It talks over two pipes: it writes one
line on its status pipe ("ready", or "error MESSAGE" before exiting 2) and reads one JSON
line (cwd, env, argv, module) on its control pipe; end of file there makes it exit 0.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONTROL_ENV = "GITSYNC_RELOAD_CONTROL_FD"
STATUS_ENV = "GITSYNC_RELOAD_STATUS_FD"
MODULES_ENV = "GITSYNC_RELOAD_PRELOAD_MODULES"
FORBIDDEN_ENV = "GITSYNC_RELOAD_PRELOAD_FORBIDDEN"
BOOTSTRAP_ENV = "GITSYNC_RELOAD_BOOTSTRAP"
STATUS_SIZE = 4096
KILL_WAIT = 5.0

PYTHON_NAME = re.compile(r"^(python|pypy)[0-9.]*$")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
BARE_FLAGS = set("bBdEIOPqsSuv")  # interpreter options without a value, alone or grouped (-uB)
VALUE_FLAGS = ("-X", "-W")  # options that take a value, attached (-Xdev) or as the next word

# Runs in the command's interpreter, which may be any Python 3.8+, not this one.
BOOTSTRAP = r'''
def _gitsync_spare():
    import io, json, os, sys
    status = int(os.environ.pop("GITSYNC_RELOAD_STATUS_FD"))
    control = int(os.environ.pop("GITSYNC_RELOAD_CONTROL_FD"))
    modules = os.environ.pop("GITSYNC_RELOAD_PRELOAD_MODULES").split(",")
    forbidden = os.path.join(os.environ.pop("GITSYNC_RELOAD_PRELOAD_FORBIDDEN"), "")
    if sys.path and sys.path[0] in ("", "."):
        del sys.path[0]  # -c put the working directory first; nothing is imported from there

    def fail(message):
        os.write(status, ("error " + message.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        os._exit(2)

    import importlib
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as error:
            fail("cannot import %r with %s: %s: %s" % (name, sys.executable, type(error).__name__, error))
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)  # built-in modules have none
        path = path and os.path.realpath(path)
        if path and path.startswith(forbidden):
            fail("%r was imported from %s, the published tree; preload installed packages only"
                 % (module.__name__, path))
    os.write(status, b"ready\n")
    os.close(status)
    with os.fdopen(control, "rb") as pipe:
        line = pipe.readline()
    if not line:
        os._exit(0)  # not needed after all
    order = json.loads(line)
    os.chdir(order["cwd"])
    os.environ.update(order["env"])
    if "LISTEN_FDS" in order["env"]:
        os.environ["LISTEN_PID"] = str(os.getpid())
    sys.argv = list(order["argv"])
    safe_path = sys.flags.isolated or getattr(sys.flags, "safe_path", False)  # -I, -P: no path entry
    import runpy
    if order["module"]:
        if not safe_path:
            sys.path.insert(0, os.getcwd())
        runpy.run_module(order["module"], run_name="__main__", alter_sys=True)
        return
    script = os.path.abspath(sys.argv[0])  # __file__ is absolute, argv[0] as given (python 3.9+)
    if not safe_path:
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    import zipfile
    if os.path.isdir(script) or zipfile.is_zipfile(script):
        runpy.run_path(script, run_name="__main__")  # a directory or zip with __main__.py
        return
    try:
        with io.open_code(script) as handle:
            source = handle.read()
    except OSError as error:
        sys.stderr.write("%s: can't open file %r: [Errno %s] %s\n"
                         % (sys.executable, script, error.errno, error.strerror))
        sys.exit(2)
    import builtins, importlib.machinery, types
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", script))
    sys.modules["__main__"] = main
    exec(compile(source, script, "exec", dont_inherit=True), main.__dict__)


_gitsync_spare()
'''


# What `python -c` runs: short, so that ps shows what the process is, followed by CMD's
# own words (`python -c "# gitsync-reload --preload ..." demo-app/app.py`); the code
# above comes in the environment and is taken out of it before the command runs.
LAUNCHER = (
    "# gitsync-reload --preload\n"
    f"import os; exec(os.environ.pop({BOOTSTRAP_ENV!r}))"
)


@dataclass(frozen=True)
class PythonCommand:
    """CMD split as Python reads it: `python [OPTIONS] SCRIPT ARGS` or `python [OPTIONS] -m MODULE ARGS`."""

    interpreter: tuple[str, ...]  # the executable and its options
    script: str | None
    module: str | None
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        """sys.argv as the program sees it (run_module puts the module's file in argv[0])."""
        return [self.script or "-m", *self.args]

    @property
    def words(self) -> tuple[str, ...]:
        """What follows the interpreter's options on the command line."""
        return (self.script,) if self.script else ("-m", self.module)


def parse_python_command(command: Sequence[str]) -> PythonCommand:
    """Split CMD, or raise ValueError saying which forms --preload can run."""
    if not PYTHON_NAME.match(os.path.basename(command[0])):
        raise ValueError(f"CMD must start with python (python SCRIPT or python -m MODULE), got {command[0]!r}")
    if "/" in command[0] and not os.path.isabs(command[0]):
        # A fresh start finds it from inside the tree; the spare starts before there is one.
        raise ValueError(f"CMD's python must be on PATH or an absolute path, got {command[0]!r}")
    options: list[str] = []
    words = list(command[1:])
    while words:
        word = words.pop(0)
        if word == "-m":
            if not words:
                raise ValueError("python -m needs a module name")
            return PythonCommand((command[0], *options), None, words[0], tuple(words[1:]))
        if word.startswith(VALUE_FLAGS):
            options.append(word)
            if len(word) == 2:
                if not words:
                    raise ValueError(f"python {word} needs a value")
                options.append(words.pop(0))
        elif len(word) > 1 and word[0] == "-" and set(word[1:]) <= BARE_FLAGS:
            options.append(word)
        elif word.startswith("-"):
            raise ValueError(f"python option {word!r} is not supported (python SCRIPT or python -m MODULE)")
        else:
            return PythonCommand((command[0], *options), word, None, tuple(words))
    raise ValueError("python without a script: use python SCRIPT or python -m MODULE")


def parse_modules(text: str) -> tuple[str, ...]:
    """'flask, waitress' -> ('flask', 'waitress'); raise ValueError naming a bad name."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not MODULE_NAME.match(name):
            raise ValueError(f"{name!r} is not a module name (e.g. flask or jinja2.ext)")
    return names


class Spare:
    """One interpreter that has imported the modules and waits to be told where to run."""

    def __init__(
        self,
        command: PythonCommand,
        modules: Sequence[str],
        environ: Mapping[str, str],
        forbidden: str,
        pass_fds: Sequence[int] = (),
    ):
        self.command = command
        self.started = time.monotonic()
        self.warm_after: float | None = None  # seconds it took to import the modules
        self.error: str | None = None
        self.announced = False  # gitsync-reload logged that it is ready
        control_read, self.control = os.pipe()
        self.status, status_write = os.pipe()
        env = {
            **environ,
            CONTROL_ENV: str(control_read),
            STATUS_ENV: str(status_write),
            MODULES_ENV: ",".join(modules),
            FORBIDDEN_ENV: os.path.realpath(forbidden),
            BOOTSTRAP_ENV: BOOTSTRAP,
        }
        try:
            self.process = subprocess.Popen(
                (*command.interpreter, "-c", LAUNCHER, *command.words, *command.args),
                cwd="/",
                env=env,
                start_new_session=True,
                pass_fds=(*pass_fds, control_read, status_write),
            )
        except OSError:
            self.close()
            raise
        finally:
            os.close(control_read)
            os.close(status_write)
        os.set_blocking(self.status, False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def state(self) -> str:
        """'warming', 'ready' or 'failed' (then .error says why)."""
        if self.error is not None:
            return "failed"
        if self.warm_after is None and self.status >= 0:
            self.read_status()
        if self.error is None and self.process.poll() is not None:
            self.error = f"it exited with status {self.process.returncode} before it was used"
        if self.error is not None:
            return "failed"
        return "ready" if self.warm_after is not None else "warming"

    def read_status(self) -> None:
        try:
            data = os.read(self.status, STATUS_SIZE)
        except BlockingIOError:
            return
        line = data.decode("utf-8", "replace").strip()
        if line == "ready":
            self.warm_after = time.monotonic() - self.started
        elif line.startswith("error "):
            self.error = line[len("error "):]
        if data == b"" or line:
            os.close(self.status)
            self.status = -1

    def wait(self, timeout: float, interrupted) -> str:
        """Wait up to timeout for it to be ready (or fail); stop early when interrupted() says so."""
        deadline = time.monotonic() + timeout
        while (state := self.state()) == "warming" and not interrupted():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.status >= 0:
                select.select([self.status], [], [], min(left, 0.05))
            else:  # it closed the pipe without a word; its exit is a moment away
                time.sleep(min(left, 0.01))
        return state

    def hand_over(self, cwd: str, env: Mapping[str, str]) -> subprocess.Popen:
        """Tell it to run CMD in cwd with env added; from now on it is the command."""
        order = {"cwd": cwd, "env": dict(env), "argv": self.command.argv, "module": self.command.module}
        try:
            os.write(self.control, json.dumps(order).encode() + b"\n")
        finally:
            self.close()
        return self.process

    def discard(self) -> None:
        """Stop it: an idle spare has nothing to finish, so its group gets SIGKILL."""
        self.close()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for name in ("control", "status"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
