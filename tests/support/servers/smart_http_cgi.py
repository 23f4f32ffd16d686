"""The request side of SmartHttpServer: one real `git http-backend` CGI run per request.

`_Handler` reads the request (gzip and chunked bodies too), records it as a
`RecordedRequest`, and relays the CGI's answer; the server object it belongs to
decides about auth, holds, delays and the CGI's process group.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import tempfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from support.ports import LOCALHOST as _LOCALHOST

if TYPE_CHECKING:
    from support.servers.smart_http import SmartHttpServer


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


class CgiHttpServer(ThreadingHTTPServer):
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
    server: CgiHttpServer

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
