"""waitress serving the API from a daemon thread of the gitsync process."""

from __future__ import annotations

import logging
import threading

from flask import Flask
from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger(__name__)

THREADS = 4
STOP_TIMEOUT = 5.0


class ApiServer:
    """`start()` binds and serves; `host` and `port` are the address bound (port 0 picks one)."""

    def __init__(self, app: Flask, host: str, port: int):
        self.app = app
        self._bind = (host, port)
        self._server = None
        self._thread: threading.Thread | None = None
        self.host: str | None = None
        self.port: int | None = None

    def start(self) -> None:
        # waitress says "Serving on ..." and similar at INFO; gitsync logs the address itself.
        logging.getLogger("waitress").setLevel(logging.WARNING)
        host, port = self._bind
        self._server = create_server(
            self.app, host=host, port=port, threads=THREADS, ident="gitsync",
            # waitress buffers a body before the app sees it: refuse far larger
            # ones right after the headers, without reading them.
            max_request_body_size=self.app.config.get("SERVER_MAX_BODY", 1024 ** 3))
        self.host, self.port = self._server.effective_host, int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name=f"http-api-{self.port}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close every connection, and let running requests end."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            # Closing inside the loop's own thread wakes its poll at once.
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        except OSError:
            wasyncore.close_all(server._map)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
        server.task_dispatcher.shutdown(timeout=STOP_TIMEOUT)
