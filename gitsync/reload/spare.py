"""Warm starts for Python commands: gitsync-reload --preload MODULE,...

A restart costs the command's whole start-up, and for a Python web app most of that is
importing its framework (Flask: a quarter to half a second here), not its own code. So
gitsync-reload keeps one interpreter started ahead of time (a "spare"): the command's own
Python, with its options, running _spare_main.py, which imports the named modules and
then waits on a pipe. On a flip the spare is told the new tree and environment; it
changes into the tree and runs the script (or -m module) as `python SCRIPT` would, with
no second interpreter start.

Only installed packages belong in the list: the spare starts before the tree it will run
is published, so code imported from a tree would be the previous commit's. The spare
starts in / with its own directory off sys.path, so the app's own modules cannot be
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
import select
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from gitsync import procs

from .pycommand import PythonCommand

CONTROL_ENV = "GITSYNC_RELOAD_CONTROL_FD"
STATUS_ENV = "GITSYNC_RELOAD_STATUS_FD"
MODULES_ENV = "GITSYNC_RELOAD_PRELOAD_MODULES"
FORBIDDEN_ENV = "GITSYNC_RELOAD_PRELOAD_FORBIDDEN"
STATUS_SIZE = 4096
KILL_WAIT = 5.0

# Run by path in CMD's interpreter; the names above are the environment it reads.
SPARE_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_spare_main.py")


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
        }
        try:
            self.process = procs.spawn_group(
                (*command.interpreter, SPARE_MAIN, *command.words, *command.args),
                cwd="/",
                env=env,
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

    def wait(self, timeout: float, interrupt: threading.Event) -> str:
        """Wait up to timeout for it to be ready (or fail); stop early once interrupt is set."""
        deadline = time.monotonic() + timeout
        while (state := self.state()) == "warming" and not interrupt.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.status >= 0:
                select.select([self.status], [], [], min(left, 0.05))
            else:  # it closed the pipe without a word; its exit is a moment away
                interrupt.wait(min(left, 0.01))
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
        procs.kill_group(self.process)
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
