"""Exec CMD with LISTEN_PID set to its own pid: `python -I -S _exec_shim.py CMD ARGS...`.

systemd's contract says LISTEN_PID is the pid of the process that reads LISTEN_FDS. That
pid is known only after fork, the environment is fixed at exec, and code run between the
two (preexec_fn) is unsafe in a process with threads, as gitsync-reload is. So this,
already running as the command's process, writes its own pid and execs CMD in its place.
Used where there is no /bin/sh (distroless images); a single-executable gitsync-reload
runs the same function itself (`gitsync-reload --gitsync-exec-shim CMD ARGS...`).
It imports nothing but os and sys: it runs with -I -S, before CMD, on every start.
"""

import os
import sys


def exec_command(argv):
    os.environ["LISTEN_PID"] = str(os.getpid())
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        print("gitsync-reload: cannot run %s: %s" % (argv[0], error.strerror), file=sys.stderr)
        sys.exit(127 if isinstance(error, FileNotFoundError) else 126)


if __name__ == "__main__":
    exec_command(sys.argv[1:])
