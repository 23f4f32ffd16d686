"""Socket activation as systemd does it, for --listen: the socket at fd 3 and NOTIFY_SOCKET.

gitsync-reload binds the listening socket once and every command inherits it as fd 3
(LISTEN_FDS=1, LISTEN_PID = the command's own pid), so the port never closes across
restarts. Every command, with --listen or not, gets a datagram socket of its own
(NOTIFY_SOCKET) to send READY=1 to once it serves. Without --listen, `NoActivation`
passes no socket and leaves the rest of the environment as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping

logger = logging.getLogger(__name__)

PROG = "gitsync-reload"
LISTEN_FD = 3  # SD_LISTEN_FDS_START: where socket activation puts the first socket
LISTEN_BACKLOG = 128  # connections the kernel holds while no command is accepting
NOTICE_SIZE = 4096  # sd_notify datagrams are a few short KEY=VALUE lines

# Set for each command by gitsync-reload, never passed on from its own environment.
LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET")

# The words put before CMD so that it starts with LISTEN_PID set to its own pid (see
# _exec_shim.py for why): /bin/sh where there is one (1 ms), else this Python (~25 ms).
SH_SHIM = ("/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', PROG)
SHIM_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_exec_shim.py")
PYTHON_SHIM = (sys.executable, "-I", "-S", SHIM_FILE)
SHIM_FLAG = "--gitsync-exec-shim"  # a single executable runs the shim itself: main() looks first


def exec_shim() -> tuple[str, ...]:
    if os.access(SH_SHIM[0], os.X_OK):
        return SH_SHIM
    if getattr(sys, "frozen", False):  # one executable (PyInstaller): no .py file to run
        return (sys.executable, SHIM_FLAG)
    return PYTHON_SHIM


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


class NoActivation:
    """Without --listen: commands bind their own port; each still gets a NOTIFY_SOCKET."""

    shim: tuple[str, ...] = ()
    pass_fds: tuple[int, ...] = ()

    def __init__(self) -> None:
        self.notice_dir: str | None = None  # made at the first start
        self.prepared = 0  # names each NOTIFY_SOCKET

    def announce(self) -> None:
        pass

    def base_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {name: value for name, value in environ.items() if name != "NOTIFY_SOCKET"}

    def prepare(self) -> tuple[Notices | None, dict[str, str]]:
        """A new command's NOTIFY_SOCKET and the variables that go with it."""
        if self.notice_dir is None:
            self.notice_dir = tempfile.mkdtemp(prefix=f"{PROG}-")
        self.prepared += 1
        notices = Notices(os.path.join(self.notice_dir, f"notify-{self.prepared}"))
        return notices, {"NOTIFY_SOCKET": notices.path}

    def close(self) -> None:
        if self.notice_dir is not None:
            shutil.rmtree(self.notice_dir, ignore_errors=True)


class Activation(NoActivation):
    """With --listen: the socket every command inherits at fd 3, and one NOTIFY_SOCKET each."""

    pass_fds = (LISTEN_FD,)

    def __init__(self, listener: socket.socket):
        super().__init__()
        self.listener = listener
        self.shim = exec_shim()
        self.notice_dir = tempfile.mkdtemp(prefix=f"{PROG}-")

    def announce(self) -> None:
        host, port = self.listener.getsockname()[:2]
        logger.info("listening on %s:%s; each command gets the socket as fd %s",
                    f"[{host}]" if ":" in host else host, port, LISTEN_FD)

    def base_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        # Each command gets its own socket-activation variables, never the parent's.
        return {name: value for name, value in environ.items() if name not in LISTEN_ENV}

    def prepare(self) -> tuple[Notices | None, dict[str, str]]:
        notices, environ = super().prepare()
        return notices, {"LISTEN_FDS": "1", **environ}  # LISTEN_PID: the shim or the spare
