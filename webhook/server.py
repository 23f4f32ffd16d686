"""waitress serving the API from a daemon thread of the gitsync process, guarded
against clients that hold connections open or send more than the cap.

waitress alone stops accepting at its connection limit, so a few hundred idle
or byte-dribbling sockets (slowloris) used to lock out /healthz and webhooks
alike. Here the server keeps accepting: past MAX_CONNECTIONS it closes the
oldest connection that is not being served, taken from the client that holds
the most, so a fresh request (a probe, a forge's delivery) always gets in and
one noisy address cannot push out the others. A connection must also deliver a
complete request within REQUEST_DEADLINE of connecting or of its last answer. On
Linux the listening socket defers accept() until a connection has sent data, so
idle sockets wait in the kernel, not here, and a probe is read as soon as it is
accepted, before it can age into the oldest.

An answer that refuses a request before its body was read (413 after the head)
is followed by a lingering close: the server half-closes, reads and discards
what the client still sends (bounded), then closes. A client that sends its
whole body before reading gets the 413 instead of a connection reset.
"""

from __future__ import annotations

import errno
import heapq
import json
import logging
import socket
import threading
import time
from collections import Counter

from flask import Flask
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

log = logging.getLogger(__name__)

THREADS = 4
STOP_TIMEOUT = 5.0
# Containers run with nofile=1024; a connection can hold up to 3 descriptors
# (its socket, a spooled body, a spooled answer), and git needs its own.
MAX_CONNECTIONS = 200
# Forges give up on a delivery after about 10 s; an idle keep-alive reconnects.
REQUEST_DEADLINE = 30.0
DRAIN_BYTES = 64 * 1024 * 1024     # read and discard at most this after an early refusal
DRAIN_SECONDS = 10.0
DRAIN_CHUNK = 256 * 1024
ACCEPT_BATCH = 64                  # connections accepted per wakeup: a queue drains fast
EVICT_BATCH = 32                   # idle connections closed at once when at the limit
DEFER_ACCEPT_SECONDS = 10
CHECK_INTERVAL = 1                 # seconds between deadline checks
ERROR_TEXT = {413: "the body is larger than the receiver accepts"}


class JsonErrorTask(ErrorTask):
    """waitress's own refusals (413 after the head, 400 for a garbled request) as
    JSON with a fixed text: nothing from the request is echoed."""

    def execute(self):
        error = self.request.error
        text = ERROR_TEXT.get(error.code, error.reason.lower())
        body = json.dumps({"error": text}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class GuardedChannel(HTTPChannel):
    """One connection: knows how long it has waited for a request, and lingers
    after refusing one whose body is still on its way."""

    error_task_class = JsonErrorTask

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map=map)
        self.waiting_since = self.creation_time
        self.draining_since: float | None = None
        self._drained = 0
        self._linger = False

    @property
    def serving(self) -> bool:
        """True while the app has (or is about to have) a request of this connection."""
        return bool(self.requests)

    def overdue(self, now: float) -> bool:
        if self.draining_since is not None:
            return now - self.draining_since > DRAIN_SECONDS
        return not self.serving and now - self.waiting_since > REQUEST_DEADLINE

    def service(self):
        if self.requests and self.requests[0].error is not None:
            self._linger = True     # refused before the body was read: it may still come
        super().service()
        self.waiting_since = time.time()

    def expire(self) -> None:
        """Close at the loop's next turn, without lingering (called from the loop)."""
        self._linger = False
        self.will_close = True

    def close_now(self) -> None:
        HTTPChannel.handle_close(self)

    def handle_close(self):
        if self._linger and self.draining_since is None and self.socket is not None:
            self._start_draining()
        else:
            self.close_now()

    def _start_draining(self) -> None:
        self.will_close = self.close_when_flushed = False
        self.draining_since = time.time()
        try:
            self.socket.shutdown(socket.SHUT_WR)   # the answer is complete: FIN after it
        except OSError:
            self.close_now()

    def readable(self):
        return True if self.draining_since is not None else super().readable()

    def writable(self):
        return self.will_close if self.draining_since is not None else super().writable()

    def handle_write(self):
        if self.draining_since is not None:
            self.close_now()
        else:
            super().handle_write()

    def handle_read(self):
        if self.draining_since is None:
            self._read_request()
            return
        try:
            self._drained += len(self.recv(DRAIN_CHUNK))   # b"" at EOF: recv closed it
        except OSError:
            self.close_now()
            return
        if self._drained > DRAIN_BYTES:
            self.close_now()


    def _read_request(self) -> None:
        try:
            data = self.recv(self.adj.recv_bytes)
        except BlockingIOError:
            # A readiness event of a connection closed earlier in this loop turn,
            # whose descriptor this new one reuses: nothing to read yet, not an error.
            return
        except OSError:
            self.close_now()
            return
        if data:
            self.last_activity = time.time()
            self.received(data)
        else:
            self.connected = False      # the client closed its side


class GuardedServer(TcpWSGIServer):
    """Keeps accepting past MAX_CONNECTIONS by closing idle connections of the busiest client."""

    channel_class = GuardedChannel

    def handle_accept(self):
        for _ in range(ACCEPT_BATCH):
            try:
                accepted = self.accept()
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE):
                    self._make_room(force=True)   # out of descriptors: free one for next time
                log.debug("accept failed: %s", error)
                return
            if accepted is None:
                return
            conn, addr = accepted
            try:
                self.set_socket_options(conn)
            except OSError:     # the client already left
                conn.close()
                continue
            self._make_room()
            self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def _make_room(self, force: bool = False) -> None:
        """At the limit, close the oldest idle connections of the client holding the most:
        up to EVICT_BATCH at once, so the scan is paid once per batch, and never more
        than half of that client's, so its newest (a probe behind an attack) stay."""
        if len(self.active_channels) < MAX_CONNECTIONS and not force:
            return
        idle = [channel for channel in self.active_channels.values() if not channel.serving]
        if not idle:
            return      # all busy: waitress's connection_limit stops accepting for now
        per_client = Counter(channel.addr[0] for channel in idle)
        busiest = max(per_client, key=per_client.__getitem__)
        theirs = [channel for channel in idle if channel.addr[0] == busiest]
        count = min(EVICT_BATCH, max(1, len(theirs) // 2))
        for victim in heapq.nsmallest(count, theirs, key=lambda channel: channel.waiting_since):
            victim.close_now()

    def maintenance(self, now):
        super().maintenance(now)
        for channel in list(self.active_channels.values()):
            if channel.overdue(now):
                channel.expire()


def guarded_server(app: Flask, host: str, port: int) -> GuardedServer:
    adj = Adjustments(
        host=host, port=port, threads=THREADS, ident="gitsync",
        # waitress buffers a body before the app sees it: refuse far larger
        # ones right after the headers, without buffering them.
        max_request_body_size=app.config.get("SERVER_MAX_BODY", 1024 ** 3),
        # Room for connections accepted while every one is being served.
        connection_limit=MAX_CONNECTIONS + ACCEPT_BATCH, cleanup_interval=CHECK_INTERVAL,
        # select() fails on descriptors over 1023; poll() has no such limit.
        asyncore_use_poll=True)
    server = GuardedServer(app, adj=adj, sockinfo=adj.listen[0])
    if hasattr(socket, "TCP_DEFER_ACCEPT"):
        # Linux hands a connection to accept() only once it has sent data (or after
        # this long): idle sockets wait in the kernel, and a probe arrives with its request.
        server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)
    return server


class ApiServer:
    """`start()` binds and serves; `host` and `port` are the address bound (port 0 picks one)."""

    def __init__(self, app: Flask, host: str, port: int):
        self.app = app
        self._bind = (host, port)
        self._server: GuardedServer | None = None
        self._thread: threading.Thread | None = None
        self.host: str | None = None
        self.port: int | None = None

    def start(self) -> None:
        # waitress says "Serving on ..." and similar at INFO; gitsync logs the address itself.
        logging.getLogger("waitress").setLevel(logging.WARNING)
        server = self._server = guarded_server(self.app, *self._bind)
        self.host, self.port = server.effective_host, int(server.effective_port)
        self._thread = threading.Thread(target=server.run, name=f"http-api-{self.port}",
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
