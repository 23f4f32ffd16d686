"""Real git servers on 127.0.0.1 for gitsync's tests.

gitsync's tests talk to real git servers instead of mocks, so that what they
prove holds for what git really sends over the wire. This module provides:

* ``SmartHttpServer`` - git's smart HTTP protocol, served by running the real
  ``git http-backend`` as a CGI program for every request, with optional HTTP
  Basic auth, an artificial delay and a log of the requests it received.
* ``SshServer`` - a real OpenSSH ``sshd`` that accepts one generated client key.
* ``git_ssh_command`` - the ``GIT_SSH_COMMAND`` to reach ``SshServer``.

Both servers are context managers: ``__enter__`` starts them and returns once
they accept connections; ``__exit__`` always stops them, kills every process
they started and releases their port, so fixtures can wrap them safely.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = [
    "RecordedRequest",
    "SmartHttpServer",
    "SshServer",
    "descendant_pids",
    "git_ssh_command",
]

_LOCALHOST = "127.0.0.1"


# --------------------------------------------------------------------------
# Process helpers (/proc based: psutil is not available)
# --------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of ``pid``, None if it is gone."""
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces or ')'.
    state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
    return state, int(ppid), int(pgrp)


def _all_stats() -> dict[int, tuple[str, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def _parent_map() -> dict[int, int]:
    """Map every live pid to its parent pid."""
    return {pid: ppid for pid, (_, ppid, _) in _all_stats().items()}


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie.

    Killed processes that were orphaned may stay zombies for good when
    pid 1 does not reap them (as in some containers); they run no code.
    """
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _wait_dead(pids: set[int], timeout: float = 10.0) -> None:
    """Wait until SIGKILLed ``pids`` have really exited: delivery is asynchronous."""
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survived SIGKILL: {sorted(filter(_running, pids))}")
        time.sleep(0.01)


def descendant_pids(pid: int) -> set[int]:
    """All processes below ``pid`` in the process tree (not ``pid`` itself)."""
    parents = _parent_map()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= frontier
    return found


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and everything below it, then reap ``proc``.

    sshd's per-connection children call setsid(), so killing the process
    group is not enough. The tree is frozen with SIGSTOP from the top down
    first: a stopped process can neither fork nor exit, so its children stay
    linked to it while we look for them, and none can escape to init.
    """
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGSTOP)
        frozen = {proc.pid}
        while True:
            new = descendant_pids(proc.pid) - frozen
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            frozen |= new
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
        proc.wait()
        _wait_dead(frozen)
    proc.wait()


def _free_port() -> int:
    """A port that was free a moment ago, for programs that cannot bind port 0."""
    with socket.socket() as sock:
        sock.bind((_LOCALHOST, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------
# Smart HTTP
# --------------------------------------------------------------------------


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

        if owner.delay and owner._stopping.wait(owner.delay):
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
    remote. Received requests are logged in ``requests`` so tests can tell a
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
            proc = subprocess.Popen(
                [self._backend],
                stdin=stdin,
                stdout=subprocess.PIPE,
                env=env,
                cwd=self.project_root,
                start_new_session=True,
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
        """Kill the CGI's whole process group unless it has already been reaped.

        Once reaped, its pid (= process group id) may belong to someone else.
        """
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            group = {pid for pid, (_, _, pgrp) in _all_stats().items() if pgrp == proc.pid}
            _wait_dead(group)
        proc.wait()


def _hang_up(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _git_exec_path() -> str:
    return subprocess.run(
        ["git", "--exec-path"], check=True, capture_output=True, text=True
    ).stdout.strip()


# --------------------------------------------------------------------------
# SSH
# --------------------------------------------------------------------------


def git_ssh_command(key_path: Path, known_hosts_path: Path) -> str:
    """GIT_SSH_COMMAND that uses only ``key_path`` and trusts only ``known_hosts_path``.

    ``-F /dev/null`` keeps the machine's ssh_config out of the tests;
    BatchMode makes ssh fail instead of prompting.
    """
    return shlex.join(
        [
            "ssh",
            "-F", os.devnull,
            "-i", str(key_path),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
        ]
    )  # fmt: skip


def _keygen(path: Path, comment: str) -> str:
    """Generate a fresh ed25519 key pair at ``path``; return the public key line."""
    for stale in (path, Path(f"{path}.pub")):  # a reused directory: start over
        stale.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{path}.pub").read_text().strip()


def _find_sshd() -> str:
    # sshd re-executes itself for every connection, so it needs an absolute path.
    found = shutil.which("sshd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("sshd not found: install openssh-server")
    return os.path.abspath(found)


class SshServer:
    """A real OpenSSH sshd on 127.0.0.1 that lets the current user in by key only.

    Everything (host key, client key pair, authorized_keys, config, log) lives
    in ``tmp_dir``. Clients use ``client_key`` and a known_hosts file holding
    ``known_hosts_line()``; ``wrong_known_hosts_line()`` names the same host
    with another key, to prove that a changed host key is refused.

    After a stop it can be entered again with the same keys and port, so URLs
    and known_hosts files stay valid while the remote is down and back.
    """

    _START_ATTEMPTS = 3  # the port is picked before sshd binds it: may race
    _START_TIMEOUT = 10.0

    def __init__(self, tmp_dir: Path):
        self.dir = Path(tmp_dir)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "client_ed25519"
        self.client_pub = self.dir / "client_ed25519.pub"
        self.authorized_keys = self.dir / "authorized_keys"
        self.config_path = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self._proc: subprocess.Popen | None = None
        self._port: int | None = None
        self._host_pub = ""
        self._wrong_host_pub = ""

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> SshServer:
        if self._proc is not None:
            raise RuntimeError("server already started")
        if not self._host_pub:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._host_pub = _keygen(self.host_key, "gitsync-test-host")
            self._wrong_host_pub = _keygen(self.dir / "wrong_host_ed25519_key", "wrong-host")
            client_pub = _keygen(self.client_key, "gitsync-test-client")
            self.authorized_keys.write_text(client_pub + "\n")
        if os.geteuid() == 0:
            # Privilege separation chroots into this directory; the package
            # creates it at boot only, so it is missing in containers.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        if self._port is not None:  # a restart keeps its port
            ports = iter([self._port])
        else:
            ports = (_free_port() for _ in range(self._START_ATTEMPTS))
        try:
            if not any(self._try_start(port) for port in ports):
                raise RuntimeError(f"sshd could not bind a port:\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill sshd and every per-connection child. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill_tree(proc)

    def _try_start(self, port: int) -> bool:
        """Start sshd on ``port``; False if that port was taken meanwhile."""
        self._write_config(port)
        with open(self.log_path, "ab") as log:
            log_start = log.tell()  # this attempt's messages start here
            proc = subprocess.Popen(
                [_find_sshd(), "-D", "-e", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + self._START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if b"Address already in use" in self.log_path.read_bytes()[log_start:]:
                    return False
                raise RuntimeError(f"sshd exited with {proc.returncode}:\n{self.log_text()}")
            if self._banner_ok(port):
                self._proc, self._port = proc, port
                return True
            time.sleep(0.02)
        _kill_tree(proc)
        raise RuntimeError(f"sshd did not accept connections:\n{self.log_text()}")

    @staticmethod
    def _banner_ok(port: int) -> bool:
        """True once sshd answers with an SSH banner (so it really is sshd)."""
        try:
            with socket.create_connection((_LOCALHOST, port), timeout=1) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def _write_config(self, port: int) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {_LOCALHOST}:{port}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"AllowUsers {self.user}",
                    "AuthenticationMethods publickey",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "HostbasedAuthentication no",
                    "PermitRootLogin prohibit-password",
                    # Test files live in world-readable temp dirs.
                    "StrictModes no",
                    "UsePAM no",
                    "PidFile none",
                    # git sends GIT_PROTOCOL to ask for protocol v2 over ssh.
                    "AcceptEnv GIT_PROTOCOL",
                    # bash sources ~/.bashrc for commands run by sshd, but only
                    # in a top-level shell (SHLVL < 2). The user's rc files are
                    # slow, machine-specific, and killing a session inside one
                    # can leave stale lock files behind (pyenv's rehash does).
                    "SetEnv SHLVL=1",
                    "PermitUserRC no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )

    # -- addresses and keys ------------------------------------------------

    @property
    def port(self) -> int:
        """The port sshd listens on (still readable after stop, for checks)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def pid(self) -> int:
        """The listening sshd's pid; per-connection processes are below it."""
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    def url_for(self, path_to_bare_repo: Path) -> str:
        """ssh:// URL of a repository given by its local path."""
        path = Path(path_to_bare_repo).resolve()
        return f"ssh://{self.user}@{_LOCALHOST}:{self.port}{path}"

    def known_hosts_line(self) -> str:
        return self._known_hosts(self._host_pub)

    def wrong_known_hosts_line(self) -> str:
        """This server's address with a key it does not have."""
        return self._known_hosts(self._wrong_host_pub)

    def _known_hosts(self, public_key_line: str) -> str:
        key_type, key = public_key_line.split()[:2]
        return f"[{_LOCALHOST}]:{self.port} {key_type} {key}"

    def log_text(self) -> str:
        """sshd's log (all starts): who connected, which key was accepted."""
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""
