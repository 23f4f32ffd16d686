"""A real HTTP server on 127.0.0.1 whose answer a test changes as it goes.

It stands in for gitsync-reload's status API (or any app's health URL) in the
rollout tests: `app.answer(json=...)`, `app.answer(status=503)`, `app.answer(body=b"<html>")`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeApp:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status, self._body, self._headers, self._delay = 200, b"{}", {}, 0.0
        self.requests = 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, headers, delay = app.current()
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/v1/status"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def answer(self, json_body: object = None, *, status: int = 200, body: bytes | None = None,
               headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        if body is None:
            body = json.dumps(json_body if json_body is not None else {}).encode()
        with self._lock:
            self._status, self._body, self._headers, self._delay = status, body, headers or {}, delay

    def current(self):
        with self._lock:
            self.requests += 1
            return self._status, self._body, self._headers, self._delay

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def reload_status(commit: str | None, state: str = "ready", *, target: str | None = None,
                  attempt: dict | None = None, trees: list[str] | None = None) -> dict:
    """A gitsync-reload status answer as the contract describes it."""
    return {"commit": commit, "state": state, "pid": 4242 if commit else None,
            "target": target if target is not None else commit, "attempt": attempt,
            "trees": trees if trees is not None else ([f"/repo/.worktrees/{commit}"] if commit else []),
            "version": "test"}
