"""``SmartHttpServer``: git's smart HTTP protocol on 127.0.0.1, served by the real
``git http-backend`` run as a CGI program for every request, with optional HTTP Basic
auth, an artificial delay and a log of the requests it received.

A context manager: ``__enter__`` starts it and returns once it accepts connections;
``__exit__`` always stops it, kills every backend it started and releases its port.
"""

from __future__ import annotations

import base64
import hmac
import socket
import subprocess
import threading
from pathlib import Path

from support.ports import LOCALHOST as _LOCALHOST
from support.processes import start_group, stop_group
from support.servers.smart_http_cgi import CgiHttpServer, RecordedRequest


class SmartHttpServer:
    """Serves every bare repository under ``project_root`` over smart HTTP.

    Each request runs the real ``git http-backend`` as CGI, so clients see
    exactly what a production git HTTP server sends: protocol v0 and v2,
    shallow fetches, gzip and chunked request bodies.

    ``username``/``password`` require HTTP Basic auth on every request.
    ``delay`` seconds pass before each request is answered, to imitate a slow
    remote; between ``hold()`` and ``release()`` no request is answered at all, so a
    test can tell "did not wait for git" from "was quick enough" without a clock. Received requests are logged in ``requests`` so tests can tell a
    ref listing (GET info/refs, v2 ls-refs) from a fetch that wants objects.

    After a stop it can be entered again: it comes back on the same port, so
    tests can take a remote down and bring it back. The log is kept.
    """

    def __init__(
        self,
        project_root: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        delay: float = 0.0,
    ):
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.project_root = Path(project_root).resolve()
        self.username = username
        self.password = password
        self.delay = delay
        self._backend = str(Path(_git_exec_path(), "git-http-backend"))
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._authorizations: list[str] = []
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._released.set()
        self._children: set[subprocess.Popen] = set()
        self._connections: set[socket.socket] = set()
        self._server: CgiHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> SmartHttpServer:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._server = CgiHttpServer(self, self._port or 0)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"git-http-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving, kill running CGIs, close every socket. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            # From here on new connections are hung up on and no CGI starts;
            # this also wakes requests sleeping in ``delay``.
            self._stopping.set()
            children = list(self._children)
            connections = list(self._connections)
        server.shutdown()  # returns once no more connections are accepted
        for conn in connections:
            _hang_up(conn)  # wakes handlers blocked reading or writing it
        for proc in children:
            self._kill_backend(proc)
        server.server_close()  # closes the listening socket, joins handlers
        if self._thread is not None:
            self._thread.join()

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{_LOCALHOST}:{self.port}"

    def url_for(self, repo_name: str) -> str:
        """URL of a repository, given its path relative to project_root."""
        return f"{self.url}/{str(repo_name).strip('/')}"

    # -- holding requests --------------------------------------------------

    def hold(self) -> None:
        """From now on requests wait (unanswered) until ``release()`` or a stop."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def _wait_while_held(self) -> bool:
        """Wait while held; False if the server stops meanwhile."""
        while not self._released.wait(0.05):
            if self._stopping.is_set():
                return False
        return not self._stopping.is_set()

    # -- request log -------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._authorizations.clear()

    def upload_pack_posts(self) -> int:
        """How many POSTs went to git-upload-pack (v2 ls-refs or a fetch)."""
        return sum(r.is_upload_pack_post for r in self.requests)

    def fetch_requests(self) -> list[RecordedRequest]:
        """The upload-pack POSTs that asked for objects (a real fetch)."""
        return [r for r in self.requests if r.is_fetch]

    def received_authorization(self) -> list[str]:
        """Every Authorization header value received, in order."""
        with self._lock:
            return list(self._authorizations)

    # -- used by the handler ----------------------------------------------

    def _record(self, record: RecordedRequest, authorization: str | None) -> None:
        with self._lock:
            self._requests.append(record)
            if authorization is not None:
                self._authorizations.append(authorization)

    def _authenticate(self, authorization: str | None) -> str | None | bool:
        """The authenticated user name, None if no auth is required, else False."""
        if self.username is None:
            return None
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            return False
        expected = f"{self.username}:{self.password}".encode()
        return self.username if hmac.compare_digest(given, expected) else False

    def _track_connection(self, conn: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():
                _hang_up(conn)
            self._connections.add(conn)

    def _untrack_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _spawn_backend(self, env: dict[str, str], stdin) -> subprocess.Popen | None:
        """Start http-backend in its own process group, unless stopping.

        The own process group lets one killpg() take down the git
        upload-pack and pack-objects processes it starts, too.
        """
        with self._lock:
            if self._stopping.is_set():
                return None
            proc = start_group(
                [self._backend], stdin=stdin, stdout=subprocess.PIPE, env=env, cwd=self.project_root
            )
            self._children.add(proc)
            return proc

    def _reap_backend(self, proc: subprocess.Popen) -> None:
        self._kill_backend(proc)
        with self._lock:
            self._children.discard(proc)
        assert proc.stdout is not None
        proc.stdout.close()

    @staticmethod
    def _kill_backend(proc: subprocess.Popen) -> None:
        """Kill the CGI's whole process group (upload-pack, pack-objects) unless reaped."""
        stop_group(proc)

def _hang_up(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _git_exec_path() -> str:
    return subprocess.run(
        ["git", "--exec-path"], check=True, capture_output=True, text=True
    ).stdout.strip()


