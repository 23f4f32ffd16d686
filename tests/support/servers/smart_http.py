"""``SmartHttpServer``: git's smart HTTP protocol on 127.0.0.1, served by the real
``git http-backend`` run as a CGI program for every request, with optional HTTP Basic
auth, an artificial delay and a log of the requests it received.

A context manager: ``__enter__`` starts it and returns once it accepts connections;
``__exit__`` always stops it, kills every backend it started and releases its port.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import os
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from support.ports import LOCALHOST as _LOCALHOST
from support.processes import start_group, stop_group


@dataclass
class RecordedRequest:
    """One HTTP request as the server saw it.

    ``command`` tells what a POST to git-upload-pack asked for, read from its
    first pkt-line: ``"ls-refs"`` or ``"fetch"`` for protocol v2 commands,
    ``"want"`` for a protocol v0/v1 fetch, None otherwise (e.g. a GET).
    ``status`` is set just before the response starts, so it is known by the
    time the client has seen anything.
    """

    method: str
    path: str
    query: str
    command: str | None
    git_protocol: str | None
    content_encoding: str | None
    transfer_encoding: str | None
    status: int | None = None

    @property
    def is_upload_pack_post(self) -> bool:
        return self.method == "POST" and self.path.endswith("/git-upload-pack")

    @property
    def is_fetch(self) -> bool:
        """True when the client asked for objects (not just for refs)."""
        return self.is_upload_pack_post and self.command in ("fetch", "want")


def _first_pkt_command(body: bytes, content_encoding: str | None) -> str | None:
    """Classify a git request body by its first pkt-line (see RecordedRequest)."""
    if content_encoding in ("gzip", "x-gzip"):
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return None
    try:
        length = int(body[:4], 16)
    except ValueError:
        return None
    if length < 4:  # flush, delimiter or response-end packet
        return None
    line = body[4:length].rstrip(b"\n").decode("utf-8", "replace")
    if line.startswith("command="):
        return line[len("command=") :]
    if line.startswith("want "):
        return "want"
    return None


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows the SmartHttpServer it works for.

    Handler threads are daemons (a stuck one never blocks interpreter exit)
    but are still joined by server_close() because block_on_close is set.
    """

    daemon_threads = True
    block_on_close = True

    def __init__(self, owner: SmartHttpServer, port: int):
        self.owner = owner
        super().__init__((_LOCALHOST, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Runs git http-backend as CGI for each request and streams its output."""

    protocol_version = "HTTP/1.1"  # keep-alive, like real git servers
    timeout = 60  # an idle keep-alive connection must not hold a thread forever
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track_connection(self.connection)

    def finish(self) -> None:
        self.server.owner._untrack_connection(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """Silent: the request log is the place to look, not stderr."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # -- request -----------------------------------------------------------

    def _read_body(self) -> bytes:
        """The whole request body, with chunked transfer encoding undone.

        git sends requests bigger than http.postBuffer chunked, without a
        Content-Length. Buffering the body lets us log what it asks for and
        hand the CGI an exact CONTENT_LENGTH.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        body = self._read_body()
        encoding = self.headers.get("Content-Encoding")
        record = RecordedRequest(
            method=self.command,
            path=unquote(url.path),
            query=url.query,
            command=_first_pkt_command(body, encoding),
            git_protocol=self.headers.get("Git-Protocol"),
            content_encoding=encoding,
            transfer_encoding=self.headers.get("Transfer-Encoding"),
        )
        authorization = self.headers.get("Authorization")
        owner._record(record, authorization)

        stopped = not owner._wait_while_held()
        if stopped or (owner.delay and owner._stopping.wait(owner.delay)):
            self.close_connection = True  # server is stopping: just hang up
            return
        user = owner._authenticate(authorization)
        if user is False:
            record.status = 401
            message = b"authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
            return
        self._run_backend(body, record, user)

    # -- CGI ---------------------------------------------------------------

    def _cgi_env(self, content_length: int, user: str | None) -> dict[str, str]:
        owner = self.server.owner
        url = urlsplit(self.path)
        env = {
            # A minimal environment: the test process's GIT_* variables and
            # the machine's git config must not change how the server works.
            "PATH": os.environ.get("PATH", os.defpath),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(owner.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_NAME": _LOCALHOST,
            "SERVER_PORT": str(owner.port),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(url.path),
            "QUERY_STRING": url.query,
            "REQUEST_METHOD": self.command,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_LENGTH": str(content_length),
        }
        optional = {
            "CONTENT_TYPE": self.headers.get("Content-Type"),
            "REMOTE_USER": user,
            # Protocol v2 is requested with this header; http-backend reads
            # it from GIT_PROTOCOL.
            "GIT_PROTOCOL": self.headers.get("Git-Protocol"),
            # http-backend inflates gzip request bodies itself when told so.
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding"),
        }
        env.update({key: value for key, value in optional.items() if value})
        return env

    def _run_backend(self, body: bytes, record: RecordedRequest, user: str | None) -> None:
        owner = self.server.owner
        env = self._cgi_env(len(body), user)
        # The body goes through a file rather than a pipe so that a CGI that
        # writes before it has read everything can never deadlock with us.
        with tempfile.TemporaryFile() as stdin:
            stdin.write(body)
            stdin.seek(0)
            proc = owner._spawn_backend(env, stdin)
        if proc is None:  # server is stopping
            self.close_connection = True
            return
        try:
            self._relay(proc, record)
        except OSError:
            # The client went away (or the server is stopping and shut the
            # socket down): nobody will read the rest, so stop producing it.
            self.close_connection = True
        finally:
            owner._reap_backend(proc)

    def _relay(self, proc: subprocess.Popen, record: RecordedRequest) -> None:
        """Turn the CGI's output into an HTTP response, streaming the body."""
        assert proc.stdout is not None
        status, reason, headers = 200, "OK", []
        saw_header_end = False
        while True:
            line = proc.stdout.readline()
            if line in (b"\r\n", b"\n"):
                saw_header_end = True
                break
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            else:
                headers.append((name.strip(), value.strip()))
        if not saw_header_end:
            status, reason, headers = 502, "Bad Gateway", [("Content-Length", "0")]

        record.status = status
        self.send_response(status, reason or None)
        chunked = not any(name.lower() == "content-length" for name, _ in headers)
        for name, value in headers:
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if not saw_header_end:
            return

        while data := proc.stdout.read1(65536):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if proc.wait() < 0:
            # Killed (e.g. the server is stopping): leave the response
            # unterminated so the client sees a truncated transfer.
            self.close_connection = True
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")


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
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> SmartHttpServer:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._server = _Server(self, self._port or 0)
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


