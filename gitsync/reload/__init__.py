"""gitsync-reload: run a command inside the published tree, and again in the next one.

    gitsync-reload --link /repo/app -- python app.py

The sidecar publishes each commit as <root>/.worktrees/<sha> and renames a new
relative symlink over <root>/<link>. This program starts the command with its
working directory at the link's target (resolved at every start, so it never
keeps running in a tree that is about to be deleted) and GITSYNC_HASH set to the
published commit, and moves it to the next tree when the link moves.

Parts (arrows point down the list only):

    cli.py          main(): settings -> the parts -> run
    supervisor.py   the loop: lifecycle and signals
    rollover.py     how to move to a new tree: Restart | SignalOnly | HandOff (--listen)
    launcher.py     how a command starts: cold | warm (--preload, spare.py)
    prepare.py      --prepare: before the first start for new content, and before the
                    rollover; cache.py: DIR/<key> per content, made aside and renamed
    watch.py        did the link's name change? (the only watchfiles user)
    record.py       the serving command, the one starting, the attempt and why it failed
    status.py       --status-bind: GET /api/v1/status, answered from the record's snapshot
    readiness.py    when a new command counts as ready (READY=1, --ready-url, --ready-after)
    output.py       --report-output: pass the command's output through, keep its last lines
    child.py        one started command; stopping a process group with a grace period
    systemd.py      NOTIFY_SOCKET for every command; --listen: the socket at fd 3, the LISTEN_PID shim
    spare.py        --preload: one interpreter that imported the modules ahead of time
    config.py       flags and GITSYNC_RELOAD_* -> ReloadConfig (pycommand.py: python CMD)
    _spare_main.py, _exec_shim.py   programs run by path in another interpreter

Process groups, signals and reaping are gitsync.procs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from .systemd import SHIM_FLAG


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == [SHIM_FLAG]:
        # As a single executable, this program is its own LISTEN_PID shim. It runs before
        # every command, so it execs at once, before the rest of gitsync-reload is imported.
        from ._exec_shim import exec_command

        exec_command(args[1:])
    from .cli import run

    return run(args, os.environ if environ is None else environ)
