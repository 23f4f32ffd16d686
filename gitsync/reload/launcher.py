"""How a command is started: cold (a fresh process in its own group) or warm (--preload:
in a spare interpreter that imported the modules beforehand, cold when there is none).

Interface the loop uses: `start(tree, extra)` -> Child, raising OSError, StartFailed or
NotStarted;
`tend()` every tick; `child_ready()` when a command sent READY=1; `processes()` (its
own children, for reaping); `close()`; `fatal` once it gave up.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping

from gitsync import procs
from gitsync.durations import format_duration

from .child import Child
from .config import ReloadConfig
from .output import OutputTail
from .spare import Spare
from .systemd import NoActivation

logger = logging.getLogger(__name__)

SPARE_DELAY = 1.0  # after a start, warm the next interpreter this much later, or at READY=1 (--preload)
SPARE_RETRY = 30.0  # after a spare failed once it had worked, wait this long before the next
WARM_WAIT = 10.0  # a start waits this long for a spare still importing, then starts cold


class NotStarted(Exception):
    """A start was called off: gitsync-reload is exiting."""


class StartFailed(Exception):
    """A step before the command failed (e.g. preparing the tree): the loop records a failed
    attempt with this one-line reason (and output) and retries with the crash back-off."""

    def __init__(self, reason: str, output: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.output = output


class ColdLauncher:
    """Every start is a fresh process: CMD (behind the LISTEN_PID shim with --listen) in the tree."""

    def __init__(self, config: ReloadConfig, activation: NoActivation, should_exit: threading.Event):
        self.config = config
        self.activation = activation
        self.should_exit = should_exit
        self.fatal: str | None = None  # why gitsync-reload must give up (exit 2)

    def start(self, tree: str, extra: Mapping[str, str] | None = None) -> Child:
        """Start CMD in tree, with GITSYNC_HASH, extra (GITSYNC_CACHE with --prepare) and
        (--listen) its own NOTIFY_SOCKET."""
        notices, environ = self.activation.prepare()
        try:
            process, warm = self.launch(tree, {"GITSYNC_HASH": os.path.basename(tree), **(extra or {}), **environ})
        except BaseException:
            if notices is not None:
                notices.close()
            raise
        output = OutputTail(process) if process.stdout is not None else None  # --report-output, cold
        return Child(process, tree, time.monotonic(), notices, warm=warm, output=output)

    def base_environ(self) -> dict[str, str]:
        return self.activation.base_environ(self.config.environ)

    def launch(self, tree: str, environ: Mapping[str, str]) -> tuple[subprocess.Popen, bool]:
        argv, env = (*self.activation.shim, *self.config.command), {**self.base_environ(), **environ}
        if not self.config.report_output:
            return procs.spawn_group(argv, cwd=tree, env=env, pass_fds=self.activation.pass_fds), False
        # As procs.spawn_group, with pipes that output.py passes on and keeps the tail of.
        process = subprocess.Popen(argv, cwd=tree, env=env, start_new_session=True,
                                   pass_fds=self.activation.pass_fds, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        return process, False

    def tend(self) -> None:
        pass

    def child_ready(self) -> None:
        pass

    def processes(self) -> list[subprocess.Popen]:
        return []

    def close(self) -> None:
        pass


class WarmLauncher(ColdLauncher):
    """--preload: keep one spare interpreter; each start runs in it, and a new one follows."""

    def __init__(self, config: ReloadConfig, activation: NoActivation, should_exit: threading.Event):
        super().__init__(config, activation, should_exit)
        self.spare: Spare | None = None  # the interpreter the next start runs in
        self.spare_due: float | None = time.monotonic()  # when to make one
        self.spare_at_ready = False  # make it as soon as the new command sends READY=1 instead
        self.proven = False  # a spare has imported the modules once: later failures are not fatal

    def launch(self, tree: str, environ: Mapping[str, str]) -> tuple[subprocess.Popen, bool]:
        process = self.launch_warm(tree, environ)
        return (process, True) if process is not None else super().launch(tree, environ)

    def launch_warm(self, tree: str, environ: Mapping[str, str]) -> subprocess.Popen | None:
        """Hand tree and environ to the spare interpreter; None when there is none to use."""
        spare = self.spare
        if spare is None:
            return None
        state = spare.wait(WARM_WAIT, self.should_exit)
        if self.should_exit.is_set():
            raise NotStarted()
        if state == "failed":
            self.spare_failed(spare.error)
            if self.fatal:
                raise NotStarted()
            return None
        self.spare, self.spare_due, self.spare_at_ready = None, time.monotonic() + SPARE_DELAY, True
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

    def tend(self) -> None:
        """Make a spare when one is due, and notice one that is warm or failed."""
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

    def child_ready(self) -> None:
        if self.spare_at_ready and self.spare_due is not None:
            self.spare_due = min(self.spare_due, time.monotonic())  # it serves: warm the next one now

    def make_spare(self) -> None:
        python = self.config.python
        assert python is not None  # the config sets it with --preload, and only then is this launcher used
        self.spare_due, self.spare_at_ready = None, False
        link_directory = os.path.realpath(os.path.dirname(self.config.link))
        try:
            self.spare = Spare(
                python,
                self.config.preload,
                self.base_environ(),
                forbidden=os.path.join(link_directory, ".worktrees"),
                pass_fds=self.activation.pass_fds,
            )
        except OSError as error:
            self.spare_failed(f"cannot run {python.interpreter[0]}: {error.strerror or error}")

    def note_warm(self, spare: Spare) -> None:
        if not spare.announced:
            logger.info("spare interpreter pid %s is ready: imported %s in %s; the next start runs in it",
                        spare.pid, ",".join(self.config.preload), format_duration(round(spare.warm_after or 0.0, 3)))
            spare.announced = True
        self.proven = True

    def spare_failed(self, error: str | None) -> None:
        self.close()
        if not self.proven:  # it never worked: a setting is wrong, not a passing fault
            self.fatal = f"--preload: {error}"
            self.should_exit.set()
            return
        logger.warning("spare interpreter failed: %s; starting afresh meanwhile, trying again in %s",
                       error, format_duration(SPARE_RETRY))
        self.spare_due, self.spare_at_ready = time.monotonic() + SPARE_RETRY, False

    def processes(self) -> list[subprocess.Popen]:
        return [self.spare.process] if self.spare is not None else []

    def close(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.discard()


def launcher_for(config: ReloadConfig, activation: NoActivation, should_exit: threading.Event) -> ColdLauncher:
    if config.preload:
        return WarmLauncher(config, activation, should_exit)
    return ColdLauncher(config, activation, should_exit)
