"""--status-bind: GET /api/v1/status, gitsync-reload's small versioned API (stdlib HTTP only).

The loop publishes the record's snapshot each tick (`Board.publish`); the server's
threads only copy the latest one under a lock, so a slow client never holds up the
loop. Short socket timeouts bound each request; `close()` stops the server and joins
its threads.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gitsync import __version__

logger = logging.getLogger(__name__)

STATUS_PATH = "/api/v1/status"
SOCKET_TIMEOUT = 2.0  # a client that sends nothing is dropped after this long


class Board:
    """The latest snapshot, handed from the loop to the server's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest: dict = {}

    def publish(self, snapshot: dict) -> None:
        with self.lock:
            self.latest = snapshot

    def read(self) -> dict:
        with self.lock:
            return {**self.latest, "version": __version__}


class Handler(BaseHTTPRequestHandler):
    timeout = SOCKET_TIMEOUT
    server_version = "gitsync-reload"
    board: Board  # set on the subclass each server makes

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] != STATUS_PATH:
            self.answer(404, {"error": f"not found: {self.path.split('?', 1)[0]}; try GET {STATUS_PATH}"})
            return
        self.answer(200, self.board.read())

    def refuse_method(self) -> None:
        self.answer(405, {"error": f"only GET {STATUS_PATH}"}, allow="GET")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = refuse_method

    def answer(self, code: int, body: dict, allow: str | None = None) -> None:
        data = (json.dumps(body, indent=1) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        logger.debug("status API: " + format, *args)


class StatusServer:
    """Bind at once (raise OSError); serve in a thread after start(); close() leaves no thread."""

    def __init__(self, address: tuple[str, int], board: Board):
        host, port = address
        handler = type("BoardHandler", (Handler,), {"board": board})
        server_class = type("Server", (ThreadingHTTPServer,), {
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
            "daemon_threads": False, "block_on_close": True,  # close() joins the request threads
        })
        self.server = server_class((host, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="status-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{STATUS_PATH}"

    def start(self) -> None:
        self.thread.start()
        logger.info("status API on %s", self.url)

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()
